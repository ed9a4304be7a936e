"""Forge adapter: everything that touches Forge's backend.

Forge computes CFG inside `backend.sampling.sampling_function` and never fires on_cfg_denoised.
Per sampling pass a clone of the UNet patcher gets the hooks of `hosts.patcher.hooks`: a post-CFG
function (first in the list, so it sees the host's raw result) that evaluates the base model with
`calc_cond_uncond_batch`, the call Forge's own PAG and SAG use, with the prompt's LoRA patches
switched off; and a model function wrapper that runs base-only calls with the patches off.
LoRA-only and base-only calls return the host's own result, so gamma 1 and gamma 0 match plain
generations bit for bit.
"""
from __future__ import annotations

import math
import os
import types
from collections.abc import Callable

import torch

import lib_autolora.hosts.patcher.hooks as patcher_hooks
from lib_autolora.core.params import ParamsMethods
from lib_autolora.hosts.forge.lora import ForgeLoraSwitch
from lib_autolora.hosts.layers.layer_off import BatchLayoutError
from lib_autolora.hosts.patcher.generation import PatcherGeneration, pass_scale
from lib_autolora.webui.host_objects import Denoiser, DenoiserParams, Network, Options, Processing, UnetPatcher

from backend import memory_management
from backend.sampling.condition import compile_conditions, compile_weighted_conditions
from backend.sampling.sampling_function import calc_cond_uncond_batch
from modules import shared

FLOAT_STORAGE = (torch.float32, torch.float16, torch.bfloat16)


def _host_cond_scale(denoiser: Denoiser, sigma: torch.Tensor) -> float:
    """The scale CFGDenoiser.forward hands to sampling_function for this call (1 when it skips CFG)."""
    opts, extra, p = shared.opts, denoiser.sampler.sampler_extra_args, denoiser.p
    if opts.skip_early_cond > 0 and denoiser.step / denoiser.total_steps <= opts.skip_early_cond:
        return 1.0
    s_min_uncond = extra.get("s_min_uncond") or 0
    every_other = "s_min_uncond_all" in opts.data_labels  # ersatzForge has no such option and skips on every step
    if (denoiser.step % 2 or not every_other or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
        return 1.0
    return p.hr_cfg if p.is_hr_pass else extra["cond_scale"]


class ForgeGeneration(PatcherGeneration):
    switch: ForgeLoraSwitch | None

    def __init__(self, p: Processing, params: ParamsMethods, opts: Options) -> None:
        super().__init__(p, params, opts)
        # (cond, uncond) base predictions of a batched call, for post_cfg
        self.batched_base: tuple[torch.Tensor, torch.Tensor] | None = None
        self.batch_failed: str | None = None  # why batched evaluation cannot apply to this generation

    def loaded_networks(self) -> list[Network]:
        loaded = super().loaded_networks()
        if loaded:
            return loaded
        # ersatzForge's load_networks fills a list of its own and leaves networks.loaded_networks empty:
        # the LoRA files patched into the prompt's UNet and text encoder name the networks instead
        objects = self.p.sd_model.forge_objects
        patchers = (objects.unet, getattr(objects.clip, "patcher", None))
        files = dict.fromkeys(key[0] for patcher in patchers for key in getattr(patcher, "lora_patches", None) or {})
        return [types.SimpleNamespace(name=os.path.splitext(os.path.basename(name))[0]) for name in files]

    def low_vram(self) -> bool:
        return patcher_hooks.offloading(memory_management, self.p.sd_model.forge_objects.unet)

    # -- what the shared patcher generation asks of Forge --

    def unsupported(self, p: Processing, unet: UnetPatcher) -> str | None:
        assert self.pass_params is not None, "AutoLoRA applies to this pass"
        _, uc = p.get_conds()
        if patcher_hooks.explicit_scales(self.pass_params) and math.isclose(pass_scale(p), 1.0) and uc is None:
            return "with CFG Scale 1 Forge encodes no negative prompt, so w1/w2 other than 1 cannot apply"
        if unet.model.storage_dtype not in FLOAT_STORAGE and not unet.has_online_lora():
            return ("LoRA merged into quantized weights cannot be switched off per step; "
                    "choose a Diffusion in Low Bits option with '(fp16 LoRA)'")
        return None

    def switch_for(self, p: Processing, unet: UnetPatcher) -> tuple[Callable[[], ForgeLoraSwitch], object]:
        patches = getattr(unet, "lora_patches", {})
        return (lambda: ForgeLoraSwitch(unet.model, patches, self.memory_mode()),
                (unet.model, str(list(patches.keys()))))

    def call_scale(self, params: DenoiserParams) -> float:
        return _host_cond_scale(params.denoiser, params.sigma)

    # -- per denoiser call --

    def on_cfg_denoiser(self, params: DenoiserParams) -> None:
        self.batched_base = None
        super().on_cfg_denoiser(params)

    def _batch_obstacle(self, args: patcher_hooks.Args) -> str | None:
        """Why this model call cannot take the base rows too, or None."""
        switch, step = self.switch, self.step
        assert switch is not None and step is not None and step.base_conds is not None, "the base model runs"
        conds = step.base_conds
        conds_list, _, uncond = conds
        if not switch.merged_everywhere():
            return "online LoRA patches are applied in each forward, not merged into the weights"
        if "control" in args["c"]:
            return "ControlNet computes its control for the host's rows only"
        rows = args["cond_or_uncond"]
        # cond rows alone where the host runs an uncond pass: its uncond rows ran in a call of their own
        assert step.host_scale is not None, "on_cfg_denoiser set this call's scale"
        uncond_apart = rows == [0] and uncond is not None and not patcher_hooks.skips_uncond_at(
            step.host_scale, shared.sd_model.forge_objects.unet.model_options)
        if len(conds_list[0]) != 1 or sorted(rows) not in ([0], [0, 1]) or uncond_apart:
            return "the WebUI splits this step's conds into several model calls (AND prompts, low memory)"
        if 1 in rows and uncond is None:
            return "the base model has no uncond here"
        return None

    def evaluate_batched(self, run: patcher_hooks.Run, args: patcher_hooks.Args) -> torch.Tensor:
        """The host's model call with the base model's rows of the step appended; the base predictions
        are kept for post_cfg. Where that cannot apply, says why once and runs two calls."""
        reason = self.batch_failed or self._batch_obstacle(args)
        if reason is None:
            assert self.step is not None and self.step.base_conds is not None, "the base model runs in this call"
            conds_list, tensor, uncond = self.step.base_conds
            entries = compile_weighted_conditions(tensor, conds_list) + (compile_conditions(uncond) or [])
            rows = args["input"].shape[0]
            try:
                c = patcher_hooks.batched_conditioning(args["c"], entries, args["cond_or_uncond"], args["input"])
                with self.base_pass(batch_rows=rows):
                    out = run({**args, "input": torch.cat([args["input"]] * 2), "c": c,
                               "timestep": torch.cat([args["timestep"]] * 2)})
                self.batched_base = patcher_hooks.base_predictions(out[rows:], args["cond_or_uncond"])
                self.report.batched_calls += 1
                return out[:rows]
            except (ValueError, BatchLayoutError) as error:
                reason = self.batch_failed = str(error)
        return self.two_calls(reason, run, args)

    def evaluate_base(self, args: patcher_hooks.Args, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's (cond, uncond) predictions, batched by the host's own function."""
        if self.batched_base is not None:
            return self.batched_base
        assert self.step is not None and self.step.base_conds is not None, "the base model runs in this call"
        cond_in, uncond_in = patcher_hooks.base_conds(self.step.base_conds, args, with_uncond,
                                                      compile_weighted_conditions, compile_conditions)
        with self.base_pass():
            return calc_cond_uncond_batch(args["model"], cond_in, uncond_in, args["input"], args["sigma"],
                                          args["model_options"])
