"""AutoLoRA for one generation request, as every host runs it; a host family subclasses it.

Per sampling pass the host prepares its hooks (`prepare_pass`); per denoiser call `begin_call` decides
which model evaluations the call needs and keeps that as `step` (a frozen `core.step.Step`), which the
host code reads; when the pass's sampler returns, what the network switch held on the device is
released (`end_pass`), before the WebUI decodes; every patch and hook goes through `recorder`, and
`close` undoes it all at the end. What differs between hosts (their conds, their networks, their
sampler) is asked of the subclass through the methods that raise NotImplementedError here.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from lib_autolora.core import guidance
from lib_autolora.core.params import FIELDS, ParamsMethods
from lib_autolora.core.recorder import Recorder
from lib_autolora.core.report import RunReport
from lib_autolora.core.step import Step, StepConds
from lib_autolora.webui import console, settings, testing
from lib_autolora.webui.host_objects import Conds, Denoiser, DenoiserParams, Network, Options, Processing, Sampler


class Switch(Protocol):
    """What a generation asks of its host's network switch (hosts/: A1111's, the patchers')."""
    switches: int  # times the networks were switched off and on again
    switch_seconds: float
    layers: Any  # its hosts/layers/layer_off.py LayerSwitch: the layers it switches, for the test state report

    def networks_off(self, exact: bool = ..., batch_rows: int | None = ...) -> AbstractContextManager[Any]: ...
    def held_bytes(self) -> int: ...
    def changed_bytes(self) -> int: ...
    def describe(self) -> str: ...
    def release_held(self) -> None: ...
    def release(self) -> None: ...


def forget_infotext(p: Processing) -> None:
    """Takes AutoLoRA's entries out of the infotext the images of `p` will get."""
    for field in FIELDS:
        p.extra_generation_params.pop(field.infotext, None)


def pass_label(p: Processing) -> str:
    return "hires pass" if getattr(p, "is_hr_pass", False) else "steps"


class Generation:
    # errors inside a pass that the adapter recovers from itself (not a failure)
    recoverable: tuple[type[Exception], ...] = ()

    def __init__(self, p: Processing, params: ParamsMethods, opts: Options) -> None:
        self.p = p
        self.params = params
        self.opts = opts  # the WebUI's options: settings and the console switch
        self.report = RunReport(params)
        self.pass_params: ParamsMethods | None = params  # the settings of the sampling pass under way
        self.switch: Switch | None = None
        self.switch_key: object = None
        self.base_c: Conds = None  # the base model's conds for the pass under way
        self.base_uc: Conds = None
        self.step: Step | None = None  # the denoiser call under way, as begin_call decided it
        self.in_base_pass = False
        self.recorder = Recorder()  # every patch and hook of the generation, undone by close()
        self.held_at_most = 0  # bytes the network switches held at once, for the console line

    # -- what each host provides --

    def loaded_networks(self) -> list[Network]:
        """The host's list of the prompt's active networks (its own list object)."""
        raise NotImplementedError

    def encode_base_conds(self, p: Processing,
                          networks_off: Callable[[], AbstractContextManager[Any]]) -> tuple[Conds, Conds]:
        """This pass's (c, uc) as the host computes them, with the networks off."""
        raise NotImplementedError

    def conds_at_step(self, c: Conds, uc: Conds, step: int) -> StepConds:
        """(conds_list, cond tensor, uncond tensor or None) at one denoiser step."""
        raise NotImplementedError

    def handles(self, denoiser: Denoiser) -> bool:
        raise NotImplementedError

    def prepare_pass(self, p: Processing) -> None:
        raise NotImplementedError

    def on_cfg_denoiser(self, params: DenoiserParams) -> None:
        raise NotImplementedError

    def low_vram(self) -> bool:
        """Whether the WebUI moves or offloads the model's weights to save device memory; `auto` then takes
        the lean path (copies on the device would defeat it). A host that has such modes says so."""
        return False

    # -- shared by every host --

    @property
    def step_number(self) -> int | None:
        return None if self.step is None else self.step.number

    def _stop_applying(self, reason: str) -> bool:
        """AutoLoRA stands aside for the rest of the generation; True the first time."""
        if not self.report.record_not_applied(reason):
            return False
        if not self.report.active_steps:  # nothing applied: the infotext must not say otherwise
            forget_infotext(self.p)
        return True

    def stand_aside(self, reason: str) -> None:
        if self._stop_applying(reason) and settings.console_summary(self.opts):
            done = "the rest is generated" if self.report.active_steps else "generating"
            console.say(f"AutoLoRA: not applied, {reason}; {done} as usual.")

    @contextlib.contextmanager
    def failing(self, what: str) -> Iterator[None]:
        """Where an error means AutoLoRA's part failed: it undoes everything, says so and stands aside
        for the rest of the generation; the error goes on to the host (which fails the generation, or
        logs a script hook's error and generates on). The adapter's `recoverable` errors go on untouched."""
        try:
            yield
        except self.recoverable:
            raise
        except Exception as error:
            self.close()
            if self._stop_applying(f"{what} failed"):
                console.say(f"AutoLoRA: {what} failed ({type(error).__name__}: {str(error)[:200]}); "
                            "AutoLoRA undid its changes and stands aside for the rest of this generation.")
            raise

    @contextlib.contextmanager
    def base_pass(self, exact: bool = False, batch_rows: int | None = None) -> Iterator[None]:
        """A model evaluation of the base model: the prompt's networks off inside (`exact`: bit for bit;
        `batch_rows`: off only for the rows after the first `batch_rows`, a batched call)."""
        assert self.switch is not None, "a base pass needs the network switch"
        with self.failing(f"the base pass at step {self.step_number}"), self.switch.networks_off(exact, batch_rows):
            self.in_base_pass = True
            try:
                testing.inject(self, "base")
                yield
            finally:
                self.in_base_pass = False

    @contextlib.contextmanager
    def lora_pass(self) -> Iterator[None]:
        """A model evaluation of the LoRA model, as the host runs it."""
        with self.failing(f"the LoRA pass at step {self.step_number}"):
            testing.inject(self, "lora")
            yield

    def check_model(self, model_now: object, model_of_pass: object) -> None:
        """Stands aside where the model sampling now is not the one the pass was set up on."""
        if model_now is not model_of_pass:
            self.stand_aside("a refiner swapped the model during sampling")

    def two_calls(self, reason: str, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Batched evaluation cannot take this call: says why once and runs the host's call as the LoRA pass
        (the base pass follows in a call of its own)."""
        self.say_once(f"batched evaluation does not apply here ({reason}); two model calls per step")
        with self.lora_pass():
            return run(*args, **kwargs)

    def say_once(self, message: str) -> None:
        if self.report.note(message) and settings.console_summary(self.opts):
            console.say(f"AutoLoRA: {message}")

    def memory_mode(self) -> str:
        """The switch's memory mode: `auto` takes the lean path with batched evaluation and in the WebUI's
        low-VRAM modes."""
        if self.params.memory == "auto" and (self.params.batched or self.low_vram()):
            return "lean"
        return self.params.memory

    def plain_pass(self) -> bool:
        """Whether every call of the pass is plain LoRA generation with the host's own scale (gamma 1, w2
        following the CFG scale): then nothing is installed."""
        assert self.pass_params is not None, "AutoLoRA applies to this pass"
        return self.pass_params.gamma == 1 and self.pass_params.lora_cfg is None

    def start_pass(self, p: Processing) -> list[Network] | None:
        """The prompt's loaded networks if AutoLoRA applies to the sampling pass that starts, else
        None (the hires pass can be off; without networks AutoLoRA stands aside)."""
        self.pass_params = self.params.for_pass(getattr(p, "is_hr_pass", False))
        if self.pass_params is None or self.report.not_applied:
            return None
        loaded = self.loaded_networks()
        if not loaded:
            self.stand_aside("no LoRA network is active in the prompt")
            return None
        return loaded

    def set_base_conds(self, p: Processing, networks_off: Callable[[], AbstractContextManager[Any]],
                       lora_conds: tuple[Conds, Conds]) -> None:
        """The base model's conds for this pass: none where no call runs it (gamma 1), the LoRA's own
        where the text encoder keeps its LoRA, else the host's encoded with the networks off."""
        assert self.pass_params is not None, "AutoLoRA applies to this pass"
        if self.pass_params.gamma == 1:
            self.base_c = self.base_uc = None
        elif self.pass_params.base_text_encoder:
            self.base_c, self.base_uc = self.encode_base_conds(p, networks_off)
        else:
            self.base_c, self.base_uc = lora_conds

    def use_switch(self, switch_for: Callable[[], Switch], key: object) -> Switch:
        """The network switch for `key` (what it is valid for), made anew when that changes."""
        if self.switch is None or self.switch_key != key:
            if self.switch is not None:
                self.end_pass()
                self.switch.release()
            self.switch, self.switch_key = switch_for(), key
        return self.switch

    def watch_sampler(self, sampler: Sampler) -> None:
        """Has `end_pass` run when the sampler's sampling loop returns, whatever ends it, where the sampler
        runs its loop through `launch_sampling` (A1111's samplers and their descendants')."""
        launch = getattr(sampler, "launch_sampling", None)
        if self.switch is None or launch is None or getattr(launch, "ends_pass_of", None) is self:
            return

        def launch_sampling(*args: Any, **kwargs: Any) -> Any:
            try:
                return launch(*args, **kwargs)
            finally:
                self.end_pass()

        launch_sampling.ends_pass_of = self  # type: ignore[attr-defined]  # marks it as this generation's
        self.recorder.set_attr(sampler, "launch_sampling", launch_sampling)

    def end_pass(self) -> None:
        """The sampling pass is over: what the switch holds on the device goes (a later pass makes it again)."""
        if self.switch is not None:
            self.held_at_most = max(self.held_at_most, self.switch.held_bytes())
            self.switch.release_held()

    def begin_call(self, params: DenoiserParams, host_scale: float | None = None) -> None:
        """Decides the denoiser call (its passes, and the base model's conds at this step where it runs),
        keeps it as `step` for the host code that runs the call, and hands the base conds to the host's
        denoiser for a base-only call. `host_scale`: the call's CFG scale, where the host code knows it."""
        denoiser = params.denoiser
        number = denoiser.step
        progress = number / denoiser.total_steps if denoiser.total_steps else 0.0
        if self.report.not_applied:
            passes = guidance.Passes.LORA
        else:
            assert self.pass_params is not None, "AutoLoRA applies to this pass"
            passes = guidance.passes_for(self.pass_params, progress)
        conds = None if passes is guidance.Passes.LORA else self.conds_at_step(self.base_c, self.base_uc, number)
        self.step = Step(number, passes, self.pass_params, conds, host_scale)
        testing.pace(self)
        self.report.record(passes, number, pass_label(self.p))
        if conds is not None and passes is guidance.Passes.BASE:
            params.text_cond, params.text_uncond = conds[1], conds[2]

    def summary(self) -> str | None:
        switch = self.switch
        if switch is None:
            return self.report.summary()
        held = max(self.held_at_most, switch.held_bytes())
        return self.report.summary(switch.switches, switch.switch_seconds, held, switch.describe(),
                                   switch.changed_bytes())

    def close(self) -> None:
        self.recorder.undo()
        if self.switch is not None:
            self.switch.release()
