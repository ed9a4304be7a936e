"""ldm_patched adapter: everything that touches the backend of reForge and Forge Classic.

These hosts keep A1111's CFGDenoiser, which fires the cfg_denoiser callback, converts the conds it
left to ldm_patched's and calls `ldm_patched.modules.samplers.sampling_function`, where CFG happens;
on_cfg_denoised never fires. Per sampling pass a clone of the UNet patcher gets the hooks of
`hosts.patcher_hooks`: a post-CFG function first in the list (it sees the host's raw result) that
evaluates the base model through the host's own batched evaluation with the prompt's LoRA switched
off, and a model function wrapper that runs base-only calls with it off. LoRA-only and base-only
calls return the host's own result, so gamma 1 and gamma 0 match plain generations bit for bit.

The CFG scale of a call is the one the host hands to sampling_function: reForge's post-CFG
arguments carry it; for Forge Classic, whose arguments do not, a conditioning modifier (the last
step before sampling_function) records it. That is also how AutoLoRA follows the host where it
skips CFG, e.g. Classic's first step with "skip early CFG" at 0.
"""
from __future__ import annotations

import functools
import math

import torch

import lib_autolora.hosts.patcher_hooks as patcher_hooks
from lib_autolora.hosts.ldm_patched import sampling
from lib_autolora.hosts.ldm_patched.lora import LdmPatchedLoraSwitch
from lib_autolora.hosts.patcher_generation import PatcherGeneration
from lib_autolora.webui.host_objects import DenoiserParams, Processing, SdModel, UnetPatcher

from ldm_patched.modules import model_management, model_patcher, samplers
from modules import shared
from modules_forge import forge_sampler


def _pass_scale(p: Processing) -> float:
    """The CFG scale of the pass about to run: reForge's hires pass has its own (`hr_cfg`)."""
    return getattr(p, "hr_cfg", p.cfg_scale) if p.is_hr_pass else p.cfg_scale


class LdmPatchedGeneration(PatcherGeneration):
    switch: LdmPatchedLoraSwitch | None

    def low_vram(self) -> bool:
        return patcher_hooks.offloading(model_management, self.p.sd_model.forge_objects.unet)

    # -- once per sampling pass; hires fix calls it twice, each time on a fresh patcher --

    def prepare_pass(self, p: Processing) -> None:
        loaded = self.start_pass(p)
        if loaded is None:
            return
        sd_model = p.sd_model
        unet = sd_model.forge_objects.unet
        if self.hooked_already(unet.model_options):
            return
        reason = self._unsupported(sd_model, unet)
        if reason is not None:
            return self.stand_aside(reason)
        self.report.networks = [n.name for n in loaded]
        if self.plain_pass():
            return
        low_vram_patch = getattr(model_patcher, "LowVramPatch", None)  # reForge's; Classic has none
        self.use_switch(lambda: LdmPatchedLoraSwitch(lambda: sd_model.forge_objects.unet, low_vram_patch,
                                                     self.memory_mode()), unet.model)
        self.set_base_conds(p, functools.partial(patcher_hooks.original_text_encoder, sd_model), p.get_conds())
        # undone at the end: the hooks must not outlive the generation
        self.patch(sd_model.forge_objects, "unet", self._hooked(unet, _pass_scale(p)))

    def _unsupported(self, sd_model: SdModel, unet: UnetPatcher) -> str | None:
        """Why AutoLoRA cannot guide this pass, or None."""
        if sd_model.cond_stage_key == "edit":
            return "InstructPix2Pix edit models are not supported"
        if getattr(self.opts, "dynamic_clip_skip_enabled", False):
            return "reForge's dynamic clip skip changes the conds per step, which AutoLoRA does not follow"
        if not unet.patches and not sd_model.forge_objects.clip.patcher.patches:
            return ("the WebUI applied none of the prompt's LoRA weights (Forge Classic leaves out a LoRA file "
                    "with more than 12 keys it cannot match)")
        return None

    def _hooked(self, unet: UnetPatcher, pass_scale: float) -> UnetPatcher:
        """A clone of the UNet patcher with AutoLoRA's hooks and the scale recorder."""
        unet = unet.clone()
        options = unet.model_options
        self.hook(options)
        patcher_hooks.add_modifier(options, sampling.scale_recorder(self))
        assert self.pass_params is not None, "AutoLoRA applies to this pass"  # prepare_pass hooks applying passes only
        if patcher_hooks.explicit_scales(self.pass_params) and math.isclose(pass_scale, 1.0):
            options["disable_cfg1_optimization"] = True  # w1/w2 need the uncond pass the host would skip
        return unet

    # -- per denoiser call --

    def on_cfg_denoiser(self, params: DenoiserParams) -> None:
        switch = self.switch
        assert switch is not None, "the generation handles this call"
        if shared.sd_model.forge_objects.unet.model is not switch.model:
            self.stand_aside("a refiner swapped the model during sampling")
        self.host_scale = None  # recorded again before this call's sampling_function
        self.step_base_conds = self.begin_call(params)

    def evaluate_batched(self, run: patcher_hooks.Run, args: patcher_hooks.Args) -> torch.Tensor:
        """Batched evaluation needs the host's model call to take extra rows; here it runs two calls."""
        self.say_once("batched evaluation is not available on this WebUI; two model calls per step")
        with self.lora_pass():
            return run(args)

    def evaluate_base(self, args: patcher_hooks.Args, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's (cond, uncond) predictions, batched by the host's own evaluation."""
        assert self.step_base_conds is not None, "the base model runs in this call"
        cond_in, uncond_in = patcher_hooks.base_conds(self.step_base_conds, args, with_uncond,
                                                      forge_sampler.cond_from_a1111_to_patched_ldm_weighted,
                                                      forge_sampler.cond_from_a1111_to_patched_ldm)
        with self.base_pass():
            return sampling.predictions(samplers, args["model"], cond_in, uncond_in, args["input"], args["sigma"],
                                        args["model_options"], args.get("cond_scale", self.host_scale))
