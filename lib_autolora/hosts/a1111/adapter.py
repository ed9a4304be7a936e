"""AUTOMATIC1111 adapter: everything that touches A1111's sampler and Lora extension.

Per denoiser call inside the range, the host's own CFGDenoiser evaluates the LoRA model as usual
(one call or chunks, as its options say); `combine_denoised`, patched on that denoiser instance,
then evaluates the base model with the same batching, guides each with its own scale through the
host's combine (AND weights, skipped uncond) and blends them. Calls that need one model only
(outside the range, gamma 1, gamma 0) run the host's pass alone, so they match plain generations
bit for bit; a pass that is plain LoRA generation throughout (gamma 1, w2 = CFG) installs nothing.
With batched evaluation the base rows ride along in the host's own call when it evaluates all rows
at once, the layers computing the base rows without the networks (`layer_off`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from lib_autolora.core import guidance
from lib_autolora.core.params import ParamsMethods
from lib_autolora.hosts.a1111 import controlnet
from lib_autolora.hosts.a1111.networks import NetworkSwitch, network_names
from lib_autolora.hosts.a1111_api import A1111ApiGeneration
from lib_autolora.hosts.layers.layer_off import BatchLayoutError
from lib_autolora.webui.host_objects import Conds, Denoiser, DenoiserParams, Options, Processing, SdModel

from modules import shared
from modules.sd_samplers_cfg_denoiser import catenate_conds, subscript_cond


def _counting_forward(generation: A1111Generation, host_forward: Callable[..., torch.Tensor], x: torch.Tensor,
                      *args: Any, **kwargs: Any) -> torch.Tensor:
    """The denoiser's inner model, as patched: counts the rows the host evaluates (fewer when it
    skips the uncond pass); the host's own evaluations are the LoRA pass, or the base pass (networks
    off) in base-only calls; with batched evaluation the base rows ride along in the host's LoRA call."""
    generation.rows_evaluated += x.shape[0]
    step = generation.step
    if generation.in_base_pass or step is None:  # the adapter's own base evaluation
        return host_forward(x, *args, **kwargs)
    if step.passes is guidance.Passes.BASE:
        with generation.base_pass(exact=True):
            return host_forward(x, *args, **kwargs)
    if step.passes is guidance.Passes.BOTH and step.params is not None and step.params.batched \
            and generation.lora_forward_ran:
        return generation.evaluate_batched(host_forward, x, *args, **kwargs)
    generation.lora_forward_ran = True  # it merges the networks into every layer it runs
    with generation.lora_pass():
        return host_forward(x, *args, **kwargs)


def _condition(cond: Conds, image_cond: torch.Tensor) -> dict[str, Any]:
    """The condition dict CFGDenoiser.forward builds for the inner model."""
    if shared.sd_model.model.conditioning_key == "crossattn-adm":
        return {"c_crossattn": [cond], "c_adm": image_cond}
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


def _join(a: Any, b: Any) -> Any:
    """Two condition structures (tensors, and lists or dicts of them) joined along the batch."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape[1:] == b.shape[1:]:
        return torch.cat([a, b])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [_join(x, y) for x, y in zip(a, b)]
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {key: _join(a[key], b[key]) for key in a}
    raise ValueError("the base model's conditions differ in shape from the LoRA model's")


class A1111Generation(A1111ApiGeneration):
    switch: NetworkSwitch | None

    def __init__(self, p: Processing, params: ParamsMethods, opts: Options) -> None:
        super().__init__(p, params, opts)
        self.model: SdModel | None = None
        self.denoiser: Denoiser | None = None
        self.denoiser_params: DenoiserParams | None = None
        self.rows_evaluated = 0  # rows the host evaluated in this call (fewer when it skips the uncond pass)
        self.batched_base: torch.Tensor | None = None  # the base rows of a batched call, for combine_denoised
        self.batch_failed: str | None = None  # why batched evaluation cannot apply to this generation
        self.lora_forward_ran = False  # whether a LoRA forward ran in this pass (then the networks are merged)

    def handles(self, denoiser: Denoiser) -> bool:
        return denoiser is self.denoiser

    def low_vram(self) -> bool:
        """--medvram, --medvram-sdxl (on SDXL) and --lowvram: A1111 moves modules to the device per forward."""
        return bool(getattr(shared.sd_model, "lowvram", False))

    def encode_base_conds(self, p: Processing,
                          networks_off: Callable[[], AbstractContextManager[Any]]) -> tuple[Conds, Conds]:
        return controlnet.mark_like_host(super().encode_base_conds(p, networks_off), p.get_conds())

    # -- once per sampling pass (every batch, and the hires pass) --

    def prepare_pass(self, p: Processing) -> None:
        loaded = self.start_pass(p)
        if loaded is None:
            return
        if shared.sd_model.cond_stage_key == "edit":
            return self.stand_aside("InstructPix2Pix edit models are not supported")
        model = self.model = shared.sd_model
        self.report.networks = [n.name for n in loaded]
        if self.plain_pass():
            return
        switch = self.use_switch(
            lambda: NetworkSwitch(loaded, model.network_layer_mapping.values(), self.memory_mode()),
            (model, network_names(loaded)))
        # every batch: prompts can differ, and img2img keeps one sampler for all batches
        self.set_base_conds(p, functools.partial(switch.networks_off, exact=True), p.get_conds())
        self.lora_forward_ran = False
        denoiser = p.sampler.model_wrap_cfg
        if denoiser is not self.denoiser:
            self.denoiser = denoiser
            combine = functools.partial(self.combine_denoised, denoiser.combine_denoised)
            self.recorder.set_attr(denoiser, "combine_denoised", combine)
            inner = denoiser.inner_model  # an nn.Module: its instance `forward` is what calls reach
            self.recorder.set_attr(inner, "forward", functools.partial(_counting_forward, self, inner.forward))

    # -- per denoiser call --

    def on_cfg_denoiser(self, params: DenoiserParams) -> None:
        self.check_model(shared.sd_model, self.model)
        self.rows_evaluated = 0
        self.batched_base = None
        self.denoiser_params = params
        self.begin_call(params)

    def combine_denoised(self, host_combine: Callable[..., torch.Tensor], x_out: torch.Tensor,
                         conds_list: Conds, uncond: Conds, cond_scale: float) -> torch.Tensor:
        if self.report.not_applied:
            return host_combine(x_out, conds_list, uncond, cond_scale)
        step, denoiser, denoiser_params = self.step, self.denoiser, self.denoiser_params
        assert step is not None and step.params is not None and denoiser is not None and denoiser_params is not None, \
            "a call of this pass"
        skipped = self.rows_evaluated < denoiser_params.x.shape[0]
        # the host passes 1.0 when it skipped the uncond pass: no CFG to scale
        w1, w2 = (cond_scale, cond_scale) if skipped else step.params.scales(cond_scale, denoiser.cond_scale_miltiplier)
        if step.passes is guidance.Passes.LORA:
            return host_combine(x_out, conds_list, uncond, w2)
        if step.passes is guidance.Passes.BASE:
            return host_combine(x_out, conds_list, uncond, w1)
        lora = host_combine(x_out, conds_list, uncond, w2)
        base_out = self.batched_base if self.batched_base is not None else self._evaluate_base(conds_list, skipped)
        base = host_combine(base_out, conds_list, uncond, w1)
        return guidance.autolora(base, lora, step.params.gamma)

    def _base_inputs(self, batch_size: int, skipped: bool) -> tuple[Any, ...]:
        """(x, sigma, image cond, cond tensor, uncond) of the base pass, padded and cut as the host does."""
        params, opts, denoiser, step = self.denoiser_params, shared.opts, self.denoiser, self.step
        assert params is not None and denoiser is not None and step is not None and step.base_conds is not None, \
            "the base model runs in this call"
        _, tensor, uncond = step.base_conds
        x_in, sigma_in, image_cond_in = params.x, params.sigma, params.image_cond
        if skipped:
            x_in, sigma_in, image_cond_in = x_in[:-batch_size], sigma_in[:-batch_size], image_cond_in[:-batch_size]
        if opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = denoiser.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = denoiser.pad_cond_uncond(tensor, uncond)
        return x_in, sigma_in, image_cond_in, tensor, uncond

    def _evaluate_base(self, conds_list: Sequence[Any], skipped: bool) -> torch.Tensor:
        """The base model's outputs in the layout of the host's x_out, batched as the host batches."""
        denoiser = self.denoiser
        assert denoiser is not None, "a call of this pass"
        model, opts = denoiser.inner_model, shared.opts
        batch_size = len(conds_list)
        x_in, sigma_in, image_cond_in, tensor, uncond = self._base_inputs(batch_size, skipped)

        def run(a: int, b: int, cond: Conds) -> torch.Tensor:
            return model(x_in[a:b], sigma_in[a:b], cond=_condition(cond, image_cond_in[a:b]))

        rows = x_in.shape[0]
        with self.base_pass():
            if skipped or tensor.shape[1] == uncond.shape[1]:
                cond_in = tensor if skipped else catenate_conds([tensor, uncond])
                chunk = rows if opts.batch_cond_uncond else batch_size
                out = torch.cat([run(a, a + chunk, subscript_cond(cond_in, a, a + chunk))
                                 for a in range(0, rows, chunk)])
            else:
                chunk = batch_size * 2 if opts.batch_cond_uncond else batch_size
                cond_rows = tensor.shape[0]
                parts = [run(a, min(a + chunk, cond_rows), subscript_cond(tensor, a, min(a + chunk, cond_rows)))
                         for a in range(0, cond_rows, chunk)]
                out = torch.cat(parts + [run(cond_rows, rows, uncond)])
        if skipped:  # as the host does: the cond result stands in for the skipped uncond
            out = torch.cat([out] + [out[c[0][0]:c[0][0] + 1] for c in conds_list])
        return out

    def _batch_obstacle(self, x: torch.Tensor) -> str | None:
        """Why this call cannot take the base rows too, or None."""
        denoiser_params = self.denoiser_params
        assert denoiser_params is not None, "a call of this pass"
        if getattr(shared.opts, "lora_functional", False):
            return "A1111's lora_functional mode adds the networks in each forward instead of merging them"
        if x.shape[0] != denoiser_params.x.shape[0]:
            return "the WebUI splits or skips the cond/uncond rows of this step"
        return None

    def evaluate_batched(self, host_forward: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor,
                         cond: Conds) -> torch.Tensor:
        """The host's call with the base model's rows of the step appended, in one model call; the base
        rows are kept for combine_denoised. Where that cannot apply, says why once and runs two calls."""
        if self.batch_failed:
            return self.two_calls(self.batch_failed, host_forward, x, sigma, cond=cond)
        switch = self.switch
        assert switch is not None, "the networks are on in this pass"
        reason = self._batch_obstacle(x)
        if reason is None and not switch.merged_everywhere():
            reason = "the networks are not merged into every layer they change"
        joined = None
        if reason is None:
            x_in, sigma_in, image_cond_in, tensor, uncond = self._base_inputs(0, skipped=False)
            try:
                joined = _join(cond, _condition(catenate_conds([tensor, uncond]), image_cond_in))
            except ValueError as error:
                reason = self.batch_failed = str(error)
        if joined is not None:
            try:
                with self.base_pass(batch_rows=x.shape[0]):
                    out = host_forward(torch.cat([x, x_in]), torch.cat([sigma, sigma_in]), cond=joined)
                self.batched_base = out[x.shape[0]:]
                self.report.batched_calls += 1
                return out[:x.shape[0]]
            except BatchLayoutError as error:
                reason = self.batch_failed = str(error)
        assert reason is not None, "the batched call did not run"
        return self.two_calls(reason, host_forward, x, sigma, cond=cond)

    def close(self) -> None:
        super().close()
        self.denoiser = self.denoiser_params = None
