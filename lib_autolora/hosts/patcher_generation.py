"""What the generations of the two patcher-based families (Forge, ldm_patched) share: which denoiser
calls are theirs, and the patchers' model options that hold their hooks, emptied of them at the end
(a host may keep a hooked patcher after the generation: Forge keeps the last loaded one)."""
from __future__ import annotations

import torch

import lib_autolora.hosts.patcher_hooks as patcher_hooks
from lib_autolora.core.params import ParamsMethods
from lib_autolora.hosts.common import CommonGeneration
from lib_autolora.webui.generation import StepConds
from lib_autolora.webui.host_objects import Denoiser, Options, Processing


class PatcherGeneration(CommonGeneration):
    def __init__(self, p: Processing, params: ParamsMethods, opts: Options) -> None:
        super().__init__(p, params, opts)
        self.step_base_conds: StepConds | None = None
        self.host_scale: float | None = None
        self.hooked: list[patcher_hooks.ModelOptions] = []  # the model options that hold our hooks

    # -- what each family provides to the hooks --

    def evaluate_base(self, args: patcher_hooks.Args, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's (cond, uncond) predictions for one call."""
        raise NotImplementedError

    def evaluate_batched(self, run: patcher_hooks.Run, args: patcher_hooks.Args) -> torch.Tensor:
        """The host's model call, with the base rows added where it can."""
        raise NotImplementedError

    def handles(self, denoiser: Denoiser) -> bool:
        return self.switch is not None and self.pass_params is not None and getattr(denoiser, "p", None) is self.p

    def hooked_already(self, options: patcher_hooks.ModelOptions) -> bool:
        """Whether `options` hold our hooks already (a clone of a patcher we hooked: hires fix); they are
        emptied at the end as well."""
        if not patcher_hooks.installed(options):
            return False
        self.hooked.append(options)
        return True

    def hook(self, options: patcher_hooks.ModelOptions) -> None:
        patcher_hooks.install(options, self)
        self.hooked.append(options)

    def close(self) -> None:
        super().close()
        for options in self.hooked:
            patcher_hooks.uninstall(options)
        self.hooked.clear()
        self.step_base_conds = None
