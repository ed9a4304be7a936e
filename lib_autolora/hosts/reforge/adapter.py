"""reForge family adapter: everything that touches the backend of reForge and Forge Classic.

These hosts keep A1111's CFGDenoiser, which fires the cfg_denoiser callback, converts the conds it
left to ldm_patched's and calls `ldm_patched.modules.samplers.sampling_function`, where CFG happens;
on_cfg_denoised never fires. Per sampling pass a clone of the UNet patcher gets the hooks of
`hosts.patcher.hooks`: a post-CFG function first in the list (it sees the host's raw result) that
evaluates the base model through the host's own batched evaluation with the prompt's LoRA switched
off, and a model function wrapper that runs base-only calls with it off. LoRA-only and base-only
calls return the host's own result, so gamma 1 and gamma 0 match plain generations bit for bit.

The CFG scale of a call is the one the host hands to sampling_function: reForge's post-CFG
arguments carry it; for Forge Classic, whose arguments do not, a conditioning modifier (the last
step before sampling_function) records it. That is also how AutoLoRA follows the host where it
skips CFG, e.g. Classic's first step with "skip early CFG" at 0.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

import lib_autolora.hosts.patcher.hooks as patcher_hooks
from lib_autolora.hosts.patcher.generation import PatcherGeneration
from lib_autolora.hosts.reforge import sampling
from lib_autolora.hosts.reforge.lora import ReforgeLoraSwitch
from lib_autolora.webui.host_objects import Processing, UnetPatcher

from ldm_patched.modules import model_management, model_patcher, samplers
from modules_forge import forge_sampler


class ReforgeGeneration(PatcherGeneration):
    switch: ReforgeLoraSwitch | None

    def low_vram(self) -> bool:
        return patcher_hooks.offloading(model_management, self.p.sd_model.forge_objects.unet)

    # -- what the shared patcher generation asks of ldm_patched --

    def unsupported(self, p: Processing, unet: UnetPatcher) -> str | None:
        sd_model = p.sd_model
        if sd_model.cond_stage_key == "edit":
            return "InstructPix2Pix edit models are not supported"
        if getattr(self.opts, "dynamic_clip_skip_enabled", False):
            return "reForge's dynamic clip skip changes the conds per step, which AutoLoRA does not follow"
        if not unet.patches and not sd_model.forge_objects.clip.patcher.patches:
            return ("the WebUI applied none of the prompt's LoRA weights (Forge Classic leaves out a LoRA file "
                    "with more than 12 keys it cannot match)")
        return None

    def switch_for(self, p: Processing, unet: UnetPatcher) -> tuple[Callable[[], ReforgeLoraSwitch], object]:
        sd_model = p.sd_model
        low_vram_patch = getattr(model_patcher, "LowVramPatch", None)  # reForge's; Classic has none
        return (lambda: ReforgeLoraSwitch(lambda: sd_model.forge_objects.unet, low_vram_patch,
                                             self.memory_mode()), unet.model)

    def hook_extras(self, options: patcher_hooks.ModelOptions) -> None:
        patcher_hooks.add_modifier(options, sampling.scale_recorder(self), self.recorder)

    # -- per denoiser call: the scale comes from the scale recorder, just before the host's CFG --

    def record_host_scale(self, scale: float) -> None:
        if self.step is not None:
            self.step = self.step.with_host_scale(scale)

    def evaluate_batched(self, run: patcher_hooks.Run, args: patcher_hooks.Args) -> torch.Tensor:
        """Batched evaluation needs the host's model call to take extra rows; here it runs two calls."""
        return self.two_calls("this WebUI's model call takes no extra rows", run, args)

    def evaluate_base(self, args: patcher_hooks.Args, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's (cond, uncond) predictions, batched by the host's own evaluation."""
        step = self.step
        assert step is not None and step.base_conds is not None, "the base model runs in this call"
        cond_in, uncond_in = patcher_hooks.base_conds(step.base_conds, args, with_uncond,
                                                      forge_sampler.cond_from_a1111_to_patched_ldm_weighted,
                                                      forge_sampler.cond_from_a1111_to_patched_ldm)
        with self.base_pass():
            return sampling.predictions(samplers, args["model"], cond_in, uncond_in, args["input"], args["sigma"],
                                        args["model_options"], args.get("cond_scale", step.host_scale))
