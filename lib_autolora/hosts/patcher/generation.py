"""What the generations of the two patcher-based families (Forge, reForge) share: a sampling pass
set up on a hooked clone of the UNet patcher, which denoiser calls are theirs, and the refiner check.
A family says only what differs: what it cannot guide, its network switch, the scale of a call where
it knows it, and its model calls (`evaluate_base`, `evaluate_batched`)."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

import lib_autolora.hosts.patcher.hooks as patcher_hooks
from lib_autolora.hosts.a1111_api import A1111ApiGeneration
from lib_autolora.hosts.layers.weight_switch import WeightSwitch
from lib_autolora.webui.generation import Switch
from lib_autolora.webui.host_objects import Denoiser, DenoiserParams, Processing, UnetPatcher

from modules import shared


def pass_scale(p: Processing) -> float:
    """The CFG scale of the pass about to run: the hires pass has its own (`hr_cfg`) where the host has one."""
    return getattr(p, "hr_cfg", p.cfg_scale) if p.is_hr_pass else p.cfg_scale


class PatcherGeneration(A1111ApiGeneration):
    switch: WeightSwitch | None

    # -- what each family provides --

    def unsupported(self, p: Processing, unet: UnetPatcher) -> str | None:
        """Why AutoLoRA cannot guide this pass, or None."""
        return None

    def switch_for(self, p: Processing, unet: UnetPatcher) -> tuple[Callable[[], Switch], object]:
        """(a maker of the network switch for this pass's patcher, what the switch is valid for)."""
        raise NotImplementedError

    def hook_extras(self, options: patcher_hooks.ModelOptions) -> None:
        """Further hooks of the family on the hooked clone's model options, through the recorder."""

    def call_scale(self, params: DenoiserParams) -> float | None:
        """The CFG scale the host uses for this call where the family knows it before the call, else None."""
        return None

    def evaluate_base(self, args: patcher_hooks.Args, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's (cond, uncond) predictions for one call."""
        raise NotImplementedError

    def evaluate_batched(self, run: patcher_hooks.Run, args: patcher_hooks.Args) -> torch.Tensor:
        """The host's model call, with the base rows added where it can."""
        raise NotImplementedError

    # -- once per sampling pass; hires fix calls it twice, on the same or a fresh patcher --

    def prepare_pass(self, p: Processing) -> None:
        loaded = self.start_pass(p)
        if loaded is None:
            return
        sd_model = p.sd_model
        unet = sd_model.forge_objects.unet
        if patcher_hooks.installed(unet.model_options):
            # a clone of a patcher we hooked (hires fix): its copied hooks go at the end as well
            self.recorder.on_undo(functools.partial(patcher_hooks.uninstall, unet.model_options))
            return
        reason = self.unsupported(p, unet)
        if reason is not None:
            return self.stand_aside(reason)
        self.report.networks = [n.name for n in loaded]
        if self.plain_pass():
            return
        self.use_switch(*self.switch_for(p, unet))
        self.set_base_conds(p, functools.partial(patcher_hooks.original_text_encoder, sd_model), p.get_conds())
        hooked = unet.clone()
        options = hooked.model_options
        patcher_hooks.install(options, self, self.recorder)
        self.hook_extras(options)
        assert self.pass_params is not None, "AutoLoRA applies to this pass"
        if patcher_hooks.explicit_scales(self.pass_params) and math.isclose(pass_scale(p), 1.0):
            # w1/w2 need the uncond pass the host would skip
            self.recorder.set_item(options, "disable_cfg1_optimization", True)
        self.recorder.set_attr(sd_model.forge_objects, "unet", hooked)  # the hooks must not outlive us

    # -- per denoiser call --

    def handles(self, denoiser: Denoiser) -> bool:
        return self.switch is not None and self.pass_params is not None and getattr(denoiser, "p", None) is self.p

    def on_cfg_denoiser(self, params: DenoiserParams) -> None:
        switch = self.switch
        assert switch is not None, "the generation handles this call"
        self.check_model(shared.sd_model.forge_objects.unet.model, switch.model)
        self.begin_call(params, self.call_scale(params))
