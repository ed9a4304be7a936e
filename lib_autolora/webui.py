"""Glue shared by both WebUI hosts: the generation's lifecycle, the base conds, the callback."""
import functools

from lib_autolora import guidance, hosts, settings, xyz
from lib_autolora.params import FIELDS, AutoLoraParamError, AutoLoraParams
from lib_autolora.report import RunReport

from modules import devices, processing, prompt_parser, script_callbacks, shared

ATTRIBUTE = "autolora_generation"  # where a processing object keeps its Generation


def _fail_sampling(error, *args, **kwargs):
    raise error


class Generation:
    """AutoLoRA for one generation request; a host adapter subclasses it."""

    def __init__(self, p, params):
        self.p = p
        self.params = params
        self.report = RunReport(params)
        self.pass_params = params  # the settings of the sampling pass under way
        self.switch = self.switch_key = None
        self.base_c = self.base_uc = None  # the base model's conds for the pass under way
        self.step_passes = None
        self.patched = []  # (object, attribute, previous value or self if none) to undo

    def stand_aside(self, reason):
        if self.report.stand_aside(reason) and settings.console_summary(shared.opts):
            done = "the rest is generated" if self.report.active_steps else "generating"
            print(f"AutoLoRA: not applied, {reason}; {done} as usual.")

    def start_pass(self, p):
        """The prompt's loaded networks if AutoLoRA applies to the sampling pass that starts, else
        None (the hires pass can be off; without networks AutoLoRA stands aside)."""
        self.pass_params = self.params.for_pass(getattr(p, "is_hr_pass", False))
        if self.pass_params is None or self.report.not_applied:
            return None
        import networks  # either host's built-in Lora extension, importable once it has loaded
        if not networks.loaded_networks:
            self.stand_aside("no LoRA network is active in the prompt")
            return None
        return networks.loaded_networks

    def set_base_conds(self, p, networks_off, lora_conds):
        """The base model's conds for this pass: none where no call runs it (gamma 1), the LoRA's own
        where the text encoder keeps its LoRA, else the host's encoded with the networks off."""
        if self.pass_params.gamma == 1:
            self.base_c = self.base_uc = None
        elif self.pass_params.base_text_encoder:
            self.base_c, self.base_uc = base_conds(p, networks_off)
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
        self.step_passes = guidance.Passes.LORA if self.report.not_applied else guidance.passes_for(self.pass_params, progress)
        self.report.record(self.step_passes, denoiser.step, pass_label(self.p))
        if self.step_passes is guidance.Passes.LORA:
            return None
        conds = conds_at_step(self.base_c, self.base_uc, denoiser.step)
        if self.step_passes is guidance.Passes.BASE:
            params.text_cond, params.text_uncond = conds[1], conds[2]
        return conds

    def handles(self, denoiser):
        raise NotImplementedError

    def prepare_pass(self, p):
        raise NotImplementedError

    def on_cfg_denoiser(self, params):
        raise NotImplementedError

    def patch(self, obj, name, value):
        self.patched.append((obj, name, obj.__dict__.get(name, self)))
        setattr(obj, name, value)

    def summary(self):
        switch = self.switch
        if switch is None:
            return self.report.summary()
        return self.report.summary(switch.switches, switch.switch_seconds, switch.held_bytes())

    def close(self):
        for obj, name, previous in reversed(self.patched):
            if previous is self:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)
        self.patched.clear()
        if self.switch is not None:
            self.switch.release()


def pass_label(p):
    return "hires pass" if getattr(p, "is_hr_pass", False) else "steps"


def base_conds(p, networks_off):
    """This pass's (c, uc) as the host computes them, inside `networks_off`.

    Calls the host's own cond setup on fresh caches, so prompt editing schedules, hires prompts
    and step counts are exactly the host's; restores every field it touches.
    """
    fields = ("c", "uc", "hr_c", "hr_uc", "cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc")
    saved = {name: p.__dict__[name] for name in fields if name in p.__dict__}
    try:
        for name in fields[4:]:
            setattr(p, name, [None, None])
        with networks_off(), devices.autocast():
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


def conds_at_step(c, uc, step):
    """(conds_list, cond tensor, uncond tensor or None) for one denoiser step, as the host rebuilds them."""
    conds_list, tensor = prompt_parser.reconstruct_multicond_batch(c, step)
    return conds_list, tensor, None if uc is None else prompt_parser.reconstruct_cond_batch(uc, step)


# -- the script's hooks --

def _adapter():
    if hosts.is_forge():
        from lib_autolora import forge
        return forge.ForgeGeneration
    from lib_autolora import a1111
    return a1111.A1111Generation


def begin(p, args):
    """`process`: read the arguments; on bad input make this generation fail with the message.
    The Generation lives on `p`, so a nested generation (an extension running one inside this
    one) has its own, and an X/Y/Z cell's copy of `p` gets its own."""
    finish(p)
    for field in FIELDS:  # X/Y/Z cells share this dict: drop what an earlier cell wrote
        p.extra_generation_params.pop(field.infotext, None)
    try:
        params = AutoLoraParams.from_args(args, settings.defaults(shared.opts), xyz.overrides(p))
    except AutoLoraParamError as error:
        print(error)
        p.sample = functools.partial(_fail_sampling, error)
        return
    if not params.enabled:
        return
    p.extra_generation_params.update(params.to_infotext())
    setattr(p, ATTRIBUTE, _adapter()(p, params))


def prepare_pass(p):
    """`process_before_every_sampling`."""
    generation = getattr(p, ATTRIBUTE, None)
    if generation is not None:
        generation.prepare_pass(p)


def finish(p):
    """`postprocess`: print what AutoLoRA did, undo everything. A generation that failed on the
    way is dropped with its `p` (and its copies of weights with it)."""
    generation = p.__dict__.pop(ATTRIBUTE, None)
    if generation is None:
        return
    line = generation.summary()
    if line and settings.console_summary(shared.opts):
        print(line)
    generation.close()


def _on_cfg_denoiser(params):
    generation = getattr(getattr(params.denoiser, "p", None), ATTRIBUTE, None)
    if generation is not None and generation.handles(params.denoiser):
        generation.on_cfg_denoiser(params)


def install_callbacks():
    """Registered once per script load; the WebUI drops them when it reloads scripts."""
    script_callbacks.on_cfg_denoiser(_on_cfg_denoiser)
