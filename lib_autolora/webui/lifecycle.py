"""The script's hooks: read the arguments, keep a Generation on the processing object for the
generation's life, route the denoiser callback to it, undo everything at the end.

The Generation lives on `p`, so a nested generation (an extension running one inside this one) has
its own, and an X/Y/Z cell's copy of `p` gets its own. A shallow copy of `p` made during a generation
(ADetailer runs every script's postprocess on one, then process on another) carries the reference but
not the ownership: the hooks act only on the Generation made for the very `p` they get.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NoReturn

from lib_autolora.core.params import AutoLoraParamError, AutoLoraParams, ParamsMethods
from lib_autolora.webui import console, settings, testing, xyz
from lib_autolora.webui.generation import Generation, forget_infotext
from lib_autolora.webui.host_objects import DenoiserParams, Options, Processing, State

GenerationClass = Callable[[Processing, ParamsMethods, Options], Generation]  # a host family's Generation

ATTRIBUTE = "autolora_generation"  # where a processing object keeps its Generation


def _fail_sampling(error: Exception, *args: object, **kwargs: object) -> NoReturn:
    raise error


def generation_of(p: Processing) -> Generation | None:
    """The Generation made for `p`, or None (none made, or `p` is a copy of the object that owns it)."""
    generation = getattr(p, ATTRIBUTE, None)
    return generation if generation is not None and generation.p is p else None


def begin(p: Processing, args: Sequence[object], opts: Options, generation_class: GenerationClass,
          switched_off: bool = False) -> None:
    """`process`: read the arguments; on bad input make this generation fail with the message
    (the WebUI only logs what a script hook raises, so the error is raised from `p.sample`).
    `switched_off`: the server runs with AutoLoRA off; a request for it generates as usual."""
    finish(p)
    testing.count("generations begun")
    forget_infotext(p)  # X/Y/Z cells share the infotext dict: drop what an earlier cell wrote
    if switched_off:
        if _asks_for_autolora(p, args):
            console.say("AutoLoRA: not applied, the server runs with --autolora-off; generating as usual.")
        return
    try:
        params = AutoLoraParams.from_args(args, settings.defaults(opts), xyz.overrides(p))
    except AutoLoraParamError as error:
        console.say(str(error))
        p.sample = functools.partial(_fail_sampling, error)
        return
    if not params.enabled:
        return
    p.extra_generation_params.update(params.to_infotext())
    setattr(p, ATTRIBUTE, generation_class(p, params, opts))


def _asks_for_autolora(p: Processing, args: Sequence[object]) -> bool:
    try:
        return AutoLoraParams.from_args(args, overrides=xyz.overrides(p)).enabled
    except AutoLoraParamError:  # settings that enable it, some of them wrong
        return True


def prepare_pass(p: Processing) -> None:
    """`process_before_every_sampling`. The WebUI logs an error raised here and samples on, so a
    failed setup leaves AutoLoRA standing aside, with nothing of it installed."""
    generation = generation_of(p)
    if generation is not None:
        with generation.failing("setting up the hires pass" if getattr(p, "is_hr_pass", False) else "setting up"):
            generation.prepare_pass(p)
            generation.watch_sampler(getattr(p, "sampler", None))
            testing.inject(generation, "setup")


def end_sampling(p: Processing) -> None:
    """`post_sample`: sampling is over, the VAE decode comes next; nothing AutoLoRA held stays for it."""
    generation = generation_of(p)
    if generation is not None:
        generation.end_pass()


def finish(p: Processing, state: State = None) -> None:
    """`postprocess`: print what AutoLoRA did, undo everything. `state`: the WebUI's job state, which
    says whether the user interrupted or skipped. A generation that failed on the way undid its
    changes then and is dropped with its `p`."""
    generation = generation_of(p)
    p.__dict__.pop(ATTRIBUTE, None)  # from a copy too: only the reference goes, its owner finishes it
    if generation is None:
        return
    line = generation.summary()
    if line and settings.console_summary(generation.opts):
        console.say(line + _stopped(state, generation.step_number))
    generation.close()


def _stopped(state: State, step: int | None) -> str:
    for flag in ("interrupted", "skipped"):
        if getattr(state, flag, False):
            return f" Sampling was {flag} after denoiser step {step}."
    return ""


def on_cfg_denoiser(params: DenoiserParams) -> None:
    """The WebUI's cfg_denoiser callback, registered once per script load."""
    generation = generation_of(getattr(params.denoiser, "p", None))
    if generation is not None and generation.handles(params.denoiser):
        generation.on_cfg_denoiser(params)
