"""What Forge and the ldm_patched family share of the adapter: hooks on a ComfyUI-style UNet
patcher's model options, the post-CFG combination on their argument layout, and the text encoder
without LoRA. Host-free: the WebUI's objects are handed in.

A generation that installs the hooks provides `step_passes`, `pass_params`, `report`,
`in_base_pass`, `base_pass()`, `lora_pass()`, `host_scale` (the CFG scale the host used for the
call, where its post-CFG arguments do not say) and `evaluate_base(args, with_uncond)` -> the base
model's (cond, uncond) predictions.
"""
import contextlib
import math

from lib_autolora.core import guidance

MARK = "autolora"  # attribute that marks our post-CFG function in a patcher's options


@contextlib.contextmanager
def original_text_encoder(sd_model):
    """The checkpoint's text encoder without the prompt's LoRA, for the base conds."""
    lora_clip = sd_model.forge_objects.clip
    sd_model.forge_objects.clip = sd_model.forge_objects_original.clip
    try:
        yield
    finally:
        sd_model.forge_objects.clip = lora_clip


def explicit_scales(params):
    """w1 and w2 where they are set and differ from 1: they need the uncond pass even at CFG scale 1."""
    return [w for w in (params.base_cfg, params.lora_cfg) if w is not None and not math.isclose(w, 1.0)]


def host_cfg(uncond, cond, scale, edit_strength, args):
    """The sampling function's CFG, written as the host writes it, through the patcher's CFG
    function where an extension set one (dynamic thresholding does)."""
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
    """Base conds take what the host added to its own (image cond, ControlNet), entry by entry."""
    for base, host in zip(base_entries, host_entries or []):
        for key, value in host.items():
            base.setdefault(key, value)
        for key, value in host["model_conds"].items():
            base["model_conds"].setdefault(key, value)
    return base_entries


def base_conds(step_conds, args, with_uncond, weighted_conds, plain_conds):
    """The base model's (cond, uncond) entries for one call, made by the host's converters
    (`weighted_conds(tensor, conds_list)`, `plain_conds(tensor)`) from this step's conds; uncond
    None where the host ran no uncond pass."""
    conds_list, tensor, uncond = step_conds
    cond_in = inherit(weighted_conds(tensor, conds_list), args["cond"])
    if not with_uncond or uncond is None:
        return cond_in, None
    return cond_in, inherit(plain_conds(uncond), args["uncond"])


def installed(options):
    return any(getattr(fn, MARK, False) for fn in options.get("sampler_post_cfg_function", []))


def install(options, generation):
    """Puts the generation's post-CFG function first (it must see the host's raw result) and wraps
    the model function, chaining any wrapper already there. Does nothing if already there.

    The hooks are plain functions: the patchers deep-copy model options when they clone, and
    deepcopy keeps functions as they are but would copy a bound method's whole generation."""
    if installed(options):
        return False
    previous = options.get("model_function_wrapper")

    def post_cfg(args):
        return _post_cfg(generation, args)

    def model_function(apply_model, args):
        return _model_function(generation, previous, apply_model, args)

    setattr(post_cfg, MARK, True)
    options["sampler_post_cfg_function"] = [post_cfg] + options.get("sampler_post_cfg_function", [])
    options["model_function_wrapper"] = model_function
    return True


def _model_function(generation, previous, apply_model, args):
    """The host's model call; base-only calls run it with the networks off."""
    def run():
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    if generation.in_base_pass:  # the adapter's own base evaluation
        return run()
    with generation.base_pass() if generation.step_passes is guidance.Passes.BASE else generation.lora_pass():
        return run()


def _post_cfg(generation, args):
    if generation.step_passes is None or generation.report.not_applied:
        return args["denoised"]
    host_scale = args.get("cond_scale", generation.host_scale)  # where the host hands it, it is the one it used
    return combine(args, generation.step_passes, generation.pass_params, host_scale, generation.evaluate_base)


def uncond_evaluated(args, host_scale):
    """Whether the host ran the uncond pass: not where it hands no uncond, nor at scale 1 unless told to."""
    if args["uncond"] is None:
        return False
    return not (math.isclose(host_scale, 1.0) and not args["model_options"].get("disable_cfg1_optimization", False))


def combine(args, passes, params, host_scale, evaluate_base):
    """The denoised result of one call; `evaluate_base(args, with_uncond)` -> (cond, uncond) base predictions."""
    with_uncond = uncond_evaluated(args, host_scale)
    edit_strength = sum(entry.get("strength", 1) for entry in args["cond"])

    def guided(uncond, cond, w, host_result=None):
        scale = host_scale if w is None or not with_uncond else w
        if host_result is not None and scale == host_scale:
            return host_result  # the host's own result, whatever CFG function produced it
        return host_cfg(uncond, cond, scale, edit_strength, args)

    host = args["uncond_denoised"], args["cond_denoised"]
    if passes is guidance.Passes.LORA:
        return guided(*host, params.lora_cfg, args["denoised"])
    if passes is guidance.Passes.BASE:  # the host evaluated the base model
        return guided(*host, params.base_cfg, args["denoised"])
    lora = guided(*host, params.lora_cfg, args["denoised"])
    base_cond, base_uncond = evaluate_base(args, with_uncond)
    return guidance.autolora(guided(base_uncond, base_cond, params.base_cfg), lora, params.gamma)
