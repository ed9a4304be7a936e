"""AutoLoRA for one generation request, as every host runs it; a host family subclasses it.

Per sampling pass the host prepares its hooks (`prepare_pass`); per denoiser call it decides which
model evaluations the call needs (`begin_call`); at the end everything it patched is undone
(`close`). What differs between hosts (their conds, their networks, their sampler) is asked of the
subclass through the methods that raise NotImplementedError here.
"""
from lib_autolora.core import guidance
from lib_autolora.core.report import RunReport
from lib_autolora.webui import settings


def pass_label(p):
    return "hires pass" if getattr(p, "is_hr_pass", False) else "steps"


class Generation:
    def __init__(self, p, params, opts):
        self.p = p
        self.params = params
        self.opts = opts  # the WebUI's options: settings and the console switch
        self.report = RunReport(params)
        self.pass_params = params  # the settings of the sampling pass under way
        self.switch = self.switch_key = None
        self.base_c = self.base_uc = None  # the base model's conds for the pass under way
        self.step_passes = None
        self.patched = []  # (object, attribute, previous value or self if none) to undo

    # -- what each host provides --

    def loaded_networks(self):
        """The host's list of the prompt's active networks (its own list object)."""
        raise NotImplementedError

    def encode_base_conds(self, p, networks_off):
        """This pass's (c, uc) as the host computes them, with the networks off."""
        raise NotImplementedError

    def conds_at_step(self, c, uc, step):
        """(conds_list, cond tensor, uncond tensor or None) at one denoiser step."""
        raise NotImplementedError

    def handles(self, denoiser):
        raise NotImplementedError

    def prepare_pass(self, p):
        raise NotImplementedError

    def on_cfg_denoiser(self, params):
        raise NotImplementedError

    # -- shared by every host --

    def stand_aside(self, reason):
        if self.report.stand_aside(reason) and settings.console_summary(self.opts):
            done = "the rest is generated" if self.report.active_steps else "generating"
            print(f"AutoLoRA: not applied, {reason}; {done} as usual.")

    def say_once(self, message):
        if self.report.note(message) and settings.console_summary(self.opts):
            print(f"AutoLoRA: {message}")

    def memory_mode(self):
        """The switch's memory mode: batched evaluation takes the lean path unless `fast` is asked for."""
        return "lean" if self.params.batched and self.params.memory == "auto" else self.params.memory

    def plain_pass(self):
        """Whether every call of the pass is plain LoRA generation with the host's own scale (gamma 1, w2
        following the CFG scale): then nothing is installed."""
        return self.pass_params.gamma == 1 and self.pass_params.lora_cfg is None

    def start_pass(self, p):
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

    def set_base_conds(self, p, networks_off, lora_conds):
        """The base model's conds for this pass: none where no call runs it (gamma 1), the LoRA's own
        where the text encoder keeps its LoRA, else the host's encoded with the networks off."""
        if self.pass_params.gamma == 1:
            self.base_c = self.base_uc = None
        elif self.pass_params.base_text_encoder:
            self.base_c, self.base_uc = self.encode_base_conds(p, networks_off)
        else:
            self.base_c, self.base_uc = lora_conds

    def use_switch(self, switch_for, key):
        """The network switch for `key` (what it is valid for), made anew when that changes."""
        if self.switch is None or self.switch_key != key:
            if self.switch is not None:
                self.switch.release()
            self.switch, self.switch_key = switch_for(), key
        return self.switch

    def begin_call(self, params):
        """Decides the passes of a denoiser call; returns (conds_list, cond, uncond) of the base
        model at this step when it runs, and hands them to the host for a base-only call."""
        denoiser = params.denoiser
        progress = denoiser.step / denoiser.total_steps if denoiser.total_steps else 0.0
        if self.report.not_applied:
            self.step_passes = guidance.Passes.LORA
        else:
            self.step_passes = guidance.passes_for(self.pass_params, progress)
        self.report.record(self.step_passes, denoiser.step, pass_label(self.p))
        if self.step_passes is guidance.Passes.LORA:
            return None
        conds = self.conds_at_step(self.base_c, self.base_uc, denoiser.step)
        if self.step_passes is guidance.Passes.BASE:
            params.text_cond, params.text_uncond = conds[1], conds[2]
        return conds

    def patch(self, obj, name, value):
        self.patched.append((obj, name, obj.__dict__.get(name, self)))
        setattr(obj, name, value)

    def summary(self):
        switch = self.switch
        if switch is None:
            return self.report.summary()
        return self.report.summary(switch.switches, switch.switch_seconds, switch.held_bytes(), switch.describe(),
                                   switch.changed_bytes())

    def close(self):
        for obj, name, previous in reversed(self.patched):
            if previous is self:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)
        self.patched.clear()
        if self.switch is not None:
            self.switch.release()
