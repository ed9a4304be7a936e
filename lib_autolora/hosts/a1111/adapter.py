"""AUTOMATIC1111 adapter: everything that touches A1111's sampler and Lora extension.

Per denoiser call inside the range, the host's own CFGDenoiser evaluates the LoRA model as usual
(one call or chunks, as its options say); `combine_denoised`, patched on that denoiser instance,
then evaluates the base model with the same batching, guides each with its own scale through the
host's combine (AND weights, skipped uncond) and blends them. Calls that need one model only
(outside the range, gamma 1, gamma 0) run the host's pass alone, so they match plain generations
bit for bit.
"""
import functools

import torch

from lib_autolora.core import guidance
from lib_autolora.hosts.a1111 import controlnet
from lib_autolora.hosts.a1111.networks import NetworkSwitch, network_names
from lib_autolora.hosts.common import CommonGeneration

from modules import shared
from modules.sd_samplers_cfg_denoiser import catenate_conds, subscript_cond


def _counting_forward(generation, host_forward, x, *args, **kwargs):
    """The denoiser's inner model, as patched: counts the rows the host evaluates (fewer when it
    skips the uncond pass); the host's own evaluations are the LoRA pass, or the base pass (networks
    off) in base-only calls."""
    generation.rows_evaluated += x.shape[0]
    if generation.in_base_pass:  # the adapter's own base evaluation
        return host_forward(x, *args, **kwargs)
    with generation.base_pass() if generation.step_passes is guidance.Passes.BASE else generation.lora_pass():
        return host_forward(x, *args, **kwargs)


def _condition(cond, image_cond):
    """The condition dict CFGDenoiser.forward builds for the inner model."""
    if shared.sd_model.model.conditioning_key == "crossattn-adm":
        return {"c_crossattn": [cond], "c_adm": image_cond}
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


class A1111Generation(CommonGeneration):
    def __init__(self, p, params, opts):
        super().__init__(p, params, opts)
        self.model = None
        self.denoiser = None
        self.denoiser_params = None
        self.step_base_conds = None
        self.rows_evaluated = 0

    def handles(self, denoiser):
        return denoiser is self.denoiser

    def encode_base_conds(self, p, networks_off):
        return controlnet.mark_like_host(super().encode_base_conds(p, networks_off), p.get_conds())

    # -- once per sampling pass (every batch, and the hires pass) --

    def prepare_pass(self, p):
        loaded = self.start_pass(p)
        if loaded is None:
            return
        if shared.sd_model.cond_stage_key == "edit":
            return self.stand_aside("InstructPix2Pix edit models are not supported")
        model = self.model = shared.sd_model
        switch = self.use_switch(lambda: NetworkSwitch(loaded, model.network_layer_mapping.values()),
                                 (model, network_names(loaded)))
        self.report.networks = [n.name for n in loaded]
        # every batch: prompts can differ, and img2img keeps one sampler for all batches
        self.set_base_conds(p, switch.networks_off, p.get_conds())
        denoiser = p.sampler.model_wrap_cfg
        if denoiser is not self.denoiser:
            self.denoiser = denoiser
            combine = functools.partial(self.combine_denoised, denoiser.combine_denoised)
            self.patch(denoiser, "combine_denoised", combine)
            inner = denoiser.inner_model  # an nn.Module: its instance `forward` is what calls reach
            self.patch(inner, "forward", functools.partial(_counting_forward, self, inner.forward))

    # -- per denoiser call --

    def on_cfg_denoiser(self, params):
        if shared.sd_model is not self.model:
            self.stand_aside("a refiner swapped the model during sampling")
        self.rows_evaluated = 0
        self.denoiser_params = params
        conds = self.begin_call(params)
        self.step_base_conds = None if conds is None else conds[1:]

    def combine_denoised(self, host_combine, x_out, conds_list, uncond, cond_scale):
        if self.report.not_applied:
            return host_combine(x_out, conds_list, uncond, cond_scale)
        skipped = self.rows_evaluated < self.denoiser_params.x.shape[0]

        def scale(w):  # the host passes 1.0 when it skipped the uncond pass
            if skipped or w is None:
                return cond_scale
            return w * self.denoiser.cond_scale_miltiplier

        if self.step_passes is guidance.Passes.LORA:
            return host_combine(x_out, conds_list, uncond, scale(self.pass_params.lora_cfg))
        if self.step_passes is guidance.Passes.BASE:
            return host_combine(x_out, conds_list, uncond, scale(self.pass_params.base_cfg))
        lora = host_combine(x_out, conds_list, uncond, scale(self.pass_params.lora_cfg))
        base_out = self._evaluate_base(conds_list, skipped)
        base = host_combine(base_out, conds_list, uncond, scale(self.pass_params.base_cfg))
        return guidance.autolora(base, lora, self.pass_params.gamma)

    def _evaluate_base(self, conds_list, skipped):
        """The base model's outputs in the layout of the host's x_out, batched as the host batches."""
        denoiser, params, opts = self.denoiser, self.denoiser_params, shared.opts
        model = denoiser.inner_model
        tensor, uncond = self.step_base_conds
        batch_size = len(conds_list)
        x_in, sigma_in, image_cond_in = params.x, params.sigma, params.image_cond
        if skipped:
            x_in, sigma_in, image_cond_in = x_in[:-batch_size], sigma_in[:-batch_size], image_cond_in[:-batch_size]
        if opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = denoiser.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = denoiser.pad_cond_uncond(tensor, uncond)

        def run(a, b, cond):
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

    def close(self):
        super().close()
        self.denoiser = self.denoiser_params = self.step_base_conds = None
