"""AUTOMATIC1111 host glue. Everything that touches the WebUI's `modules` lives here.

Per denoiser call inside the range, the host's own CFGDenoiser evaluates the LoRA model as usual
(one call or chunks, as its options say); `combine_denoised`, patched on that denoiser instance,
then evaluates the base model with the same batching, guides each with its own scale through the
host's combine (AND weights, skipped uncond) and blends them. Steps that need one model only
(outside the range, gamma 1, gamma 0) run the host's pass alone, so they match plain generations
bit for bit. All patches live on objects of one generation and are undone by `end()`.
"""
import functools

import torch

from lib_autolora import guidance
from lib_autolora.a1111_networks import NetworkSwitch, network_names
from lib_autolora.params import FIELDS, AutoLoraParamError, AutoLoraParams, parse_value

from modules import devices, processing, prompt_parser, script_callbacks, shared
from modules.sd_samplers_cfg_denoiser import catenate_conds, subscript_cond

_generation = None  # the Generation of the running request, if AutoLoRA is enabled for it


def _lora_networks():
    import networks  # A1111's built-in Lora extension, importable once it has loaded
    return networks


def _fail_sampling(error, *args, **kwargs):
    raise error


def _counting_forward(generation, host_forward, x, *args, **kwargs):
    """The denoiser's inner model, as patched: counts the rows the host evaluates (fewer when it
    skips the uncond pass) and runs base-only calls with the networks off."""
    generation.rows_evaluated += x.shape[0]
    if generation.step_passes is guidance.Passes.BASE:
        with generation.switch.networks_off():
            return host_forward(x, *args, **kwargs)
    return host_forward(x, *args, **kwargs)


def _condition(cond, image_cond):
    """The condition dict CFGDenoiser.forward builds for the inner model."""
    if shared.sd_model.model.conditioning_key == "crossattn-adm":
        return {"c_crossattn": [cond], "c_adm": image_cond}
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


def _base_conds(p, switch):
    """This pass's conds as the host computes them, with the prompt's networks switched off.

    Calls the host's own cond setup on fresh caches, so prompt editing schedules, hires prompts
    and step counts are exactly the host's; restores every field it touches.
    """
    fields = ("c", "uc", "hr_c", "hr_uc", "cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc")
    saved = {name: p.__dict__[name] for name in fields if name in p.__dict__}
    try:
        for name in fields[4:]:
            setattr(p, name, [None, None])
        with switch.networks_off(), devices.autocast():
            if getattr(p, "is_hr_pass", False):
                p.hr_c = None
                p.calculate_hr_conds()
                return p.hr_c, p.hr_uc
            processing.StableDiffusionProcessing.setup_conds(p)
            return p.c, p.uc
    finally:
        for name in fields:
            p.__dict__.pop(name, None)
        p.__dict__.update(saved)


class Generation:
    """AutoLoRA for one generation request: made by begin(), closed by end()."""

    def __init__(self, p, params):
        self.p = p
        self.params = params
        self.model = None
        self.switch = None
        self.switch_names = None
        self.denoiser = None
        self.denoiser_params = None
        self.base_c = self.base_uc = None
        self.step_passes = guidance.Passes.LORA
        self.step_base_conds = None
        self.rows_evaluated = 0
        self.calls = {passes: 0 for passes in guidance.Passes}
        self.active_steps = {}  # pass label -> denoiser steps that ran AutoLoRA
        self.network_labels = []
        self.not_applied = None
        self.patched = []  # (object, attribute) set on objects of this generation

    # -- set-up, once per sampling pass (every batch, and the hires pass) --

    def not_applicable(self, reason):
        if self.not_applied is None:
            self.not_applied = reason
            print(f"AutoLoRA: not applied, {reason}; generating as usual.")

    def prepare_pass(self, p):
        if self.not_applied:
            return
        networks = _lora_networks()
        if not networks.loaded_networks:
            return self.not_applicable("no LoRA network is active in the prompt")
        if shared.sd_model.cond_stage_key == "edit":
            return self.not_applicable("InstructPix2Pix edit models are not supported")
        denoiser = p.sampler.model_wrap_cfg
        if denoiser is self.denoiser:
            return  # already prepared for this sampler
        wanted = network_names(networks.loaded_networks)
        if self.switch is None or self.model is not shared.sd_model or self.switch_names != wanted:
            if self.switch is not None:
                self.switch.release()
            self.model = shared.sd_model
            self.switch = NetworkSwitch(networks.loaded_networks, shared.sd_model.network_layer_mapping.values())
            self.switch_names = wanted
        self.network_labels = [n.name for n in networks.loaded_networks]
        c, uc = p.get_conds()
        self.base_c, self.base_uc = _base_conds(p, self.switch) if self.params.base_text_encoder else (c, uc)
        self.denoiser = denoiser
        self._patch(denoiser, "combine_denoised", functools.partial(self.combine_denoised, denoiser.combine_denoised))
        inner = denoiser.inner_model  # an nn.Module: its instance `forward` is what calls reach
        self._patch(inner, "forward", functools.partial(_counting_forward, self, inner.forward))

    def _patch(self, obj, name, value):
        self.patched.append((obj, name, obj.__dict__.get(name, self)))
        setattr(obj, name, value)

    # -- per denoiser call --

    def on_cfg_denoiser(self, params):
        """Decides the passes of this call; a base-only call gets the base conds here."""
        denoiser = self.denoiser
        if shared.sd_model is not self.model:
            self.not_applicable("a refiner swapped the model during sampling")
        progress = denoiser.step / denoiser.total_steps if denoiser.total_steps else 0.0
        self.step_passes = guidance.Passes.LORA if self.not_applied else guidance.passes_for(self.params, progress)
        self.calls[self.step_passes] += 1
        self.rows_evaluated = 0
        self.denoiser_params = params
        if self.step_passes is guidance.Passes.LORA:
            return
        label = "hires pass" if getattr(self.p, "is_hr_pass", False) else "steps"
        self.active_steps.setdefault(label, []).append(denoiser.step)
        _, tensor = prompt_parser.reconstruct_multicond_batch(self.base_c, denoiser.step)
        self.step_base_conds = tensor, prompt_parser.reconstruct_cond_batch(self.base_uc, denoiser.step)
        if self.step_passes is guidance.Passes.BASE:
            params.text_cond, params.text_uncond = self.step_base_conds

    def combine_denoised(self, host_combine, x_out, conds_list, uncond, cond_scale):
        if self.not_applied and self.step_passes is guidance.Passes.LORA:
            return host_combine(x_out, conds_list, uncond, cond_scale)
        skipped = self.rows_evaluated < self.denoiser_params.x.shape[0]

        def scale(w):  # the host passes 1.0 when it skipped the uncond pass
            if skipped or w is None:
                return cond_scale
            return w * self.denoiser.cond_scale_miltiplier

        if self.step_passes is guidance.Passes.LORA:
            return host_combine(x_out, conds_list, uncond, scale(self.params.lora_cfg))
        if self.step_passes is guidance.Passes.BASE:
            return host_combine(x_out, conds_list, uncond, scale(self.params.base_cfg))
        lora = host_combine(x_out, conds_list, uncond, scale(self.params.lora_cfg))
        base_out = self._evaluate_base(conds_list, skipped)
        base = host_combine(base_out, conds_list, uncond, scale(self.params.base_cfg))
        return guidance.autolora(base, lora, self.params.gamma)

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
        with self.switch.networks_off():
            if skipped or tensor.shape[1] == uncond.shape[1]:
                cond_in = tensor if skipped else catenate_conds([tensor, uncond])
                chunk = rows if opts.batch_cond_uncond else batch_size
                out = torch.cat([run(a, a + chunk, subscript_cond(cond_in, a, a + chunk)) for a in range(0, rows, chunk)])
            else:
                chunk = batch_size * 2 if opts.batch_cond_uncond else batch_size
                cond_rows = tensor.shape[0]
                parts = [run(a, min(a + chunk, cond_rows), subscript_cond(tensor, a, min(a + chunk, cond_rows)))
                         for a in range(0, cond_rows, chunk)]
                out = torch.cat(parts + [run(cond_rows, rows, uncond)])
        if skipped:  # as the host does: the cond result stands in for the skipped uncond
            out = torch.cat([out] + [out[c[0][0]:c[0][0] + 1] for c in conds_list])
        return out

    # -- tear-down --

    def summary(self):
        if self.not_applied:
            return None
        params = self.params
        if not self.active_steps:
            if params.gamma == 1:
                return "AutoLoRA: gamma 1 is plain LoRA generation; no base pass was run."
            return f"AutoLoRA: no denoiser call fell in the range {params.start:g}-{params.end:g}; plain LoRA generation."
        w1 = "CFG" if params.base_cfg is None else f"{params.base_cfg:g}"
        w2 = "CFG" if params.lora_cfg is None else f"{params.lora_cfg:g}"
        active = self.calls[guidance.Passes.BOTH] + self.calls[guidance.Passes.BASE]
        steps = ", ".join(f"{label} {min(s)}-{max(s)}" for label, s in self.active_steps.items())
        mode = "base model only" if params.gamma == 0 else "LoRA and base passes"
        switch = self.switch
        return (f"AutoLoRA: gamma {params.gamma:g}, w1 {w1}, w2 {w2}, {mode} on {active} of {sum(self.calls.values())} "
                f"denoiser calls ({steps}), networks {', '.join(self.network_labels)}; {switch.switches} network switches "
                f"took {switch.switch_seconds * 1000:.0f} ms, {switch.held_bytes() / 2**20:.1f} MiB held for the base weights.")

    def close(self):
        for obj, name, previous in reversed(self.patched):
            if previous is self:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)
        self.patched.clear()
        if self.switch is not None:
            self.switch.release()
        self.denoiser = self.denoiser_params = self.step_base_conds = None


# -- the script's hooks --

def begin(p, args):
    """`process`: read the arguments; on bad input make this generation fail with the message."""
    global _generation
    end()
    try:
        if not args or not parse_value(FIELDS[0], args[0]):
            return
        params = AutoLoraParams.from_args(args)
    except AutoLoraParamError as error:
        print(error)
        p.sample = functools.partial(_fail_sampling, error)
        return
    p.extra_generation_params.update(params.to_infotext())
    _generation = Generation(p, params)


def prepare_pass(p):
    """`process_before_every_sampling`."""
    if _generation is not None and _generation.p is p:
        _generation.prepare_pass(p)


def finish(p):
    """`postprocess`: print what AutoLoRA did, undo everything."""
    if _generation is not None and _generation.p is p:
        line = _generation.summary()
        if line:
            print(line)
    end()


def end():
    global _generation
    if _generation is not None:
        _generation.close()
        _generation = None


def _on_cfg_denoiser(params):
    if _generation is not None and params.denoiser is _generation.denoiser:
        _generation.on_cfg_denoiser(params)


def install_callbacks():
    """Registered once per script load; removed with the script on unload."""
    script_callbacks.on_cfg_denoiser(_on_cfg_denoiser)
    script_callbacks.on_script_unloaded(end)
