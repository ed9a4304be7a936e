"""The host-free part of the Forge adapter: installing its hooks on a patcher's model options,
and the post-CFG combination on Forge's argument layout."""
import math

import torch

from lib_autolora.core import guidance

MARK = "autolora"  # attribute that marks our post-CFG function in a patcher's options


def forge_cfg(uncond, cond, scale, edit_strength, args):
    """sampling_function_inner's CFG, written as the host writes it, through the patcher's CFG
    function where an extension set one (Forge's dynamic thresholding does)."""
    cfg_function = args["model_options"].get("sampler_cfg_function")
    if cfg_function is not None:
        x = args["input"]
        return x - cfg_function({"cond": x - cond, "uncond": x - uncond, "cond_scale": scale, "timestep": args["sigma"],
                                 "input": x, "sigma": args["sigma"], "cond_denoised": cond, "uncond_denoised": uncond,
                                 "model": args["model"], "model_options": args["model_options"]})
    if math.isclose(edit_strength, 1.0):
        return uncond + (cond - uncond) * scale
    return uncond + (cond - uncond) * scale * edit_strength


def inherit(base_entries, host_entries):
    """Compiled base conds take what the host added to its own (image cond, ControlNet), entry by entry."""
    for base, host in zip(base_entries, host_entries or []):
        for key, value in host.items():
            base.setdefault(key, value)
        for key, value in host["model_conds"].items():
            base["model_conds"].setdefault(key, value)
    return base_entries


def installed(options):
    return any(getattr(fn, MARK, False) for fn in options.get("sampler_post_cfg_function", []))


def install(options, generation):
    """Puts the generation's post-CFG function first (it must see the host's raw result) and wraps
    the model function, chaining any wrapper already there. Does nothing if already there.

    The hooks are plain functions: Forge deep-copies model options when it clones a patcher, and
    deepcopy keeps functions as they are but would copy a bound method's whole generation."""
    if installed(options):
        return False
    previous = options.get("model_function_wrapper")

    def post_cfg(args):
        return generation.post_cfg(args)

    def model_function(apply_model, args):
        return generation.model_function(previous, apply_model, args)

    setattr(post_cfg, MARK, True)
    options["sampler_post_cfg_function"] = [post_cfg] + options.get("sampler_post_cfg_function", [])
    options["model_function_wrapper"] = model_function
    return True


def uncond_evaluated(args, host_scale):
    """Whether the host ran the uncond pass (it skips it at scale 1 unless told not to)."""
    return not (math.isclose(host_scale, 1.0) and not args["model_options"].get("disable_cfg1_optimization", False))


def combine(args, passes, params, host_scale, evaluate_base):
    """The denoised result of one call; `evaluate_base(args, with_uncond)` -> (cond, uncond) base predictions."""
    with_uncond = uncond_evaluated(args, host_scale)
    edit_strength = sum(entry.get("strength", 1) for entry in args["cond"])

    def guided(uncond, cond, w, host_result=None):
        scale = host_scale if w is None or not with_uncond else w
        if host_result is not None and scale == host_scale:
            return host_result  # the host's own result, whatever CFG function produced it
        return forge_cfg(uncond, cond, scale, edit_strength, args)

    host = args["uncond_denoised"], args["cond_denoised"]
    if passes is guidance.Passes.LORA:
        return guided(*host, params.lora_cfg, args["denoised"])
    if passes is guidance.Passes.BASE:  # the host evaluated the base model
        return guided(*host, params.base_cfg, args["denoised"])
    lora = guided(*host, params.lora_cfg, args["denoised"])
    base_cond, base_uncond = evaluate_base(args, with_uncond)
    return guidance.autolora(guided(base_uncond, base_cond, params.base_cfg), lora, params.gamma)


def batched_conditioning(host_c, base_entries, cond_or_uncond, input_x):
    """The conditioning of a model call with the base rows appended: for each chunk of the host's call
    (cond or uncond, in its order) the matching base entry's conditions, processed as
    calc_cond_uncond_batch processes them and joined to the host's key by key. Keys the base entries
    lack (an image cond) repeat the host's; transformer options mark the base chunks like the host's.
    Raises ValueError where a shape differs."""
    batch = input_x.shape[0] // len(cond_or_uncond)
    area = (input_x.shape[2], input_x.shape[3], 0, 0)
    chunks = [{key: value.process_cond(batch_size=batch, device=input_x.device, area=area)
               for key, value in base_entries[kind]["model_conds"].items()} for kind in cond_or_uncond]
    joined = dict(host_c)
    for key, value in host_c.items():
        if not torch.is_tensor(value):
            continue
        base = chunks[0][key].concat([chunk[key] for chunk in chunks[1:]]) if key in chunks[0] else value
        if not torch.is_tensor(base) or base.shape != value.shape:
            raise ValueError(f"the base model's {key} differs in shape from the LoRA model's")
        joined[key] = torch.cat([value, base])
    if "transformer_options" in host_c:
        options = joined["transformer_options"] = dict(host_c["transformer_options"])
        options["cond_or_uncond"] = list(cond_or_uncond) * 2
        rows = input_x.shape[0]
        for key in ("cond_indices", "uncond_indices"):
            if key in options:
                options[key] = list(options[key]) + [i + rows for i in options[key]]
        if torch.is_tensor(options.get("cond_mark")):
            options["cond_mark"] = torch.cat([options["cond_mark"]] * 2)
    return joined


def base_predictions(base_rows, cond_or_uncond):
    """(cond, uncond) predictions from the base rows of a batched call; uncond zero where the host
    evaluated none, as calc_cond_uncond_batch returns it."""
    chunks = dict(zip(cond_or_uncond, base_rows.chunk(len(cond_or_uncond))))
    cond = chunks[0]
    return cond, chunks.get(1, torch.zeros_like(cond))
