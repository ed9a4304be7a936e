"""What Forge and the reForge family share of the adapter: hooks on a ComfyUI-style UNet
patcher's model options, the post-CFG combination on their argument layout, and the text encoder
without LoRA. Host-free: the WebUI's objects are handed in.

What a generation that installs the hooks provides is `HookedGeneration`; the call under way is its
`step` (`core.step.Step`: the passes, the pass's settings and, where the post-CFG arguments do not
say it, the host's CFG scale). The hooks go in and out through the generation's recorder.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from lib_autolora.core import guidance
from lib_autolora.core.params import ParamsMethods
from lib_autolora.core.recorder import Recorder
from lib_autolora.core.report import RunReport
from lib_autolora.core.step import Step, StepConds
from lib_autolora.webui.host_objects import Conds, MemoryManager, SdModel, UnetPatcher

ModelOptions = dict[str, Any]  # a patcher's model options
Args = dict[str, Any]  # the arguments the host hands a hook (post-CFG, model function wrapper)
Entries = list[dict[str, Any]]  # the host's converted conds: one dict per cond, its "model_conds" among them
Run = Callable[[Args], torch.Tensor]  # the host's model call, on the wrapper's arguments
EvaluateBase = Callable[[Args, bool], tuple[torch.Tensor, torch.Tensor]]


class HookedGeneration(Protocol):
    """What the hooks ask of the generation that installs them."""
    step: Step | None  # the denoiser call under way
    report: RunReport
    in_base_pass: bool  # inside the generation's own base evaluation

    def base_pass(self, exact: bool = ..., batch_rows: int | None = ...) -> AbstractContextManager[None]: ...
    def lora_pass(self) -> AbstractContextManager[None]: ...
    def evaluate_base(self, args: Args, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]: ...
    def evaluate_batched(self, run: Run, args: Args) -> torch.Tensor: ...


MARK = "autolora"  # attribute that marks our functions in a patcher's options (and in the copies the host makes)
LOW_VRAM_STATES = ("LOW_VRAM", "NO_VRAM")  # the memory managers' VRAMState names that offload weights


def offloading(memory_manager: MemoryManager, unet: UnetPatcher) -> bool:
    """Whether the family's memory manager (Forge's `backend.memory_management`, ldm_patched's
    `model_management`) keeps the UNet's weights partly off its device: a low-VRAM state
    (`--always-low-vram`, `--always-no-vram`), Forge's CPU swap where the GPU Weights setting leaves too
    little room (`model_accelerated`), ComfyUI's partial load (`model_lowvram`)."""
    if getattr(getattr(memory_manager, "vram_state", None), "name", None) in LOW_VRAM_STATES:
        return True
    if getattr(unet.model, "model_lowvram", False):
        return True
    loaded = getattr(memory_manager, "current_loaded_models", ())
    return any(getattr(entry, "model_accelerated", False) for entry in loaded
               if getattr(getattr(entry, "model", None), "model", None) is unet.model)


@contextlib.contextmanager
def original_text_encoder(sd_model: SdModel) -> Iterator[None]:
    """The checkpoint's text encoder without the prompt's LoRA, for the base conds."""
    lora_clip = sd_model.forge_objects.clip
    sd_model.forge_objects.clip = sd_model.forge_objects_original.clip
    try:
        yield
    finally:
        sd_model.forge_objects.clip = lora_clip


def explicit_scales(params: ParamsMethods) -> list[float]:
    """w1 and w2 where they are set and differ from 1: they need the uncond pass even at CFG scale 1."""
    return [w for w in (params.base_cfg, params.lora_cfg) if w is not None and not math.isclose(w, 1.0)]


def host_cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float, edit_strength: float,
             args: Args) -> torch.Tensor:
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


def inherit(base_entries: Entries, host_entries: Entries | None) -> Entries:
    """Base conds take what the host added to its own (image cond, ControlNet), entry by entry."""
    for base, host in zip(base_entries, host_entries or []):
        for key, value in host.items():
            base.setdefault(key, value)
        for key, value in host["model_conds"].items():
            base["model_conds"].setdefault(key, value)
    return base_entries


def base_conds(step_conds: StepConds, args: Args, with_uncond: bool,
               weighted_conds: Callable[[Conds, Conds], Entries],
               plain_conds: Callable[[Conds], Entries]) -> tuple[Entries, Entries | None]:
    """The base model's (cond, uncond) entries for one call, made by the host's converters
    (`weighted_conds(tensor, conds_list)`, `plain_conds(tensor)`) from this step's conds; uncond
    None where the host ran no uncond pass."""
    conds_list, tensor, uncond = step_conds
    cond_in = inherit(weighted_conds(tensor, conds_list), args["cond"])
    if not with_uncond or uncond is None:
        return cond_in, None
    return cond_in, inherit(plain_conds(uncond), args["uncond"])


def installed(options: ModelOptions) -> bool:
    return any(getattr(fn, MARK, False) for fn in options.get("sampler_post_cfg_function", []))


def install(options: ModelOptions, generation: HookedGeneration, recorder: Recorder) -> None:
    """Puts the generation's post-CFG function first (it must see the host's raw result) and wraps
    the model function, chaining any wrapper already there; `recorder` undoes it.

    The hooks are plain functions: the patchers deep-copy model options when they clone, and
    deepcopy keeps functions as they are but would copy a bound method's whole generation."""
    previous = options.get("model_function_wrapper")

    def post_cfg(args: Args) -> torch.Tensor:
        return _post_cfg(generation, args)

    def model_function(apply_model: Callable[..., torch.Tensor], args: Args) -> torch.Tensor:
        return _model_function(generation, previous, apply_model, args)

    def keep_post_cfg(model: Any, x: torch.Tensor, timestep: torch.Tensor, uncond: Any, cond: Any,
                      cond_scale: float, model_options: ModelOptions, seed: Any) -> tuple[Any, ...]:
        """Forge Neo's sampling_function merges a sampler's own model options over the patcher's per
        call (CFG++ samplers bring a post-CFG list of their own): put ours back in front."""
        functions = model_options.get("sampler_post_cfg_function", [])
        if not any(getattr(fn, MARK, False) for fn in functions):
            model_options = {**model_options, "sampler_post_cfg_function": [post_cfg] + list(functions)}
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    for function in (post_cfg, model_function, keep_post_cfg):
        setattr(function, MARK, True)
    model_function.previous = previous  # type: ignore[attr-defined]  # what uninstall puts back in a copy
    recorder.set_item(options, "sampler_post_cfg_function", [post_cfg] + options.get("sampler_post_cfg_function", []))
    recorder.set_item(options, "model_function_wrapper", model_function)
    add_modifier(options, keep_post_cfg, recorder)


def add_modifier(options: ModelOptions, modifier: Callable[..., Any], recorder: Recorder) -> None:
    """Appends a conditioning modifier (the last step before sampling_function), marked as ours."""
    setattr(modifier, MARK, True)
    recorder.set_item(options, "conditioning_modifiers", options.get("conditioning_modifiers", []) + [modifier])


def uninstall(options: ModelOptions) -> None:
    """Takes every marked hook out of a copy the host made of hooked options (a clone of a hooked patcher,
    which the host may keep after the generation: Forge keeps the last loaded one), where the recorder
    that installed them cannot reach, and puts the wrapper they chained back."""
    def ours(function: object) -> bool:
        return getattr(function, MARK, False)

    for key in ("sampler_post_cfg_function", "conditioning_modifiers"):
        if key in options:
            options[key] = [function for function in options[key] if not ours(function)]
    wrapper = options.get("model_function_wrapper")
    if wrapper is not None and ours(wrapper):
        if wrapper.previous is None:
            del options["model_function_wrapper"]
        else:
            options["model_function_wrapper"] = wrapper.previous


def _model_function(generation: HookedGeneration, previous: Callable[..., torch.Tensor] | None,
                    apply_model: Callable[..., torch.Tensor], args: Args) -> torch.Tensor:
    """The host's model call; base-only calls run it with the networks off (exactly, so gamma 0 is
    the base model bit for bit); with batched evaluation the generation may add the base rows."""
    def run(call_args: Args) -> torch.Tensor:
        if previous is not None:
            return previous(apply_model, call_args)
        return apply_model(call_args["input"], call_args["timestep"], **call_args["c"])

    step = generation.step
    if generation.in_base_pass or step is None:  # the adapter's own base evaluation
        return run(args)
    if step.passes is guidance.Passes.BASE:
        with generation.base_pass(exact=True):
            return run(args)
    if step.passes is guidance.Passes.BOTH:
        assert step.params is not None, "AutoLoRA applies to this pass"
        if step.params.batched:
            return generation.evaluate_batched(run, args)
    with generation.lora_pass():
        return run(args)


def _post_cfg(generation: HookedGeneration, args: Args) -> torch.Tensor:
    step = generation.step
    if step is None or generation.report.not_applied:
        return args["denoised"]
    host_scale = args.get("cond_scale", step.host_scale)  # where the host hands it, it is the one it used
    assert step.params is not None, "AutoLoRA applies to this pass"
    assert host_scale is not None, "the host's scale of this call is known"
    return combine(args, step.passes, step.params, host_scale, generation.evaluate_base)


def skips_uncond_at(host_scale: float, model_options: ModelOptions) -> bool:
    """Whether the host skips the uncond pass for its scale: at scale 1, unless told not to."""
    return math.isclose(host_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)


def uncond_evaluated(args: Args, host_scale: float) -> bool:
    """Whether the host ran the uncond pass: not where it hands no uncond, nor where it skips it."""
    return args["uncond"] is not None and not skips_uncond_at(host_scale, args["model_options"])


def combine(args: Args, passes: guidance.Passes, params: ParamsMethods, host_scale: float,
            evaluate_base: EvaluateBase) -> torch.Tensor:
    """The denoised result of one call; `evaluate_base(args, with_uncond)` -> (cond, uncond) base predictions."""
    with_uncond = uncond_evaluated(args, host_scale)
    edit_strength = sum(entry.get("strength", 1) for entry in args["cond"])

    w1, w2 = params.scales(host_scale) if with_uncond else (host_scale, host_scale)  # no uncond: no CFG to scale

    def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float,
               host_result: torch.Tensor | None = None) -> torch.Tensor:
        if host_result is not None and scale == host_scale:
            return host_result  # the host's own result, whatever CFG function produced it
        return host_cfg(uncond, cond, scale, edit_strength, args)

    host = args["uncond_denoised"], args["cond_denoised"]
    if passes is guidance.Passes.LORA:
        return guided(*host, w2, args["denoised"])
    if passes is guidance.Passes.BASE:  # the host evaluated the base model
        return guided(*host, w1, args["denoised"])
    lora = guided(*host, w2, args["denoised"])
    base_cond, base_uncond = evaluate_base(args, with_uncond)
    return guidance.autolora(guided(base_uncond, base_cond, w1), lora, params.gamma)


def batched_conditioning(host_c: dict[str, Any], base_entries: Entries, cond_or_uncond: Sequence[int],
                         input_x: torch.Tensor) -> dict[str, Any]:
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


def base_predictions(base_rows: torch.Tensor, cond_or_uncond: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) predictions from the base rows of a batched call; uncond zero where the host
    evaluated none, as calc_cond_uncond_batch returns it."""
    chunks = dict(zip(cond_or_uncond, base_rows.chunk(len(cond_or_uncond))))
    cond = chunks[0]
    return cond, chunks.get(1, torch.zeros_like(cond))
