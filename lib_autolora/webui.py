"""Glue shared by both WebUI hosts: the generation's lifecycle, the base conds, the callback."""
import functools

from lib_autolora import hosts, settings, xyz
from lib_autolora.params import FIELDS, AutoLoraParamError, AutoLoraParams
from lib_autolora.report import RunReport

from modules import devices, processing, prompt_parser, script_callbacks, shared

_generation = None  # the running request's generation, if AutoLoRA is enabled for it


def _fail_sampling(error, *args, **kwargs):
    raise error


class Generation:
    """AutoLoRA for one generation request; a host adapter subclasses it."""

    def __init__(self, p, params):
        self.p = p
        self.params = params
        self.report = RunReport(params)
        self.pass_params = params  # the settings of the sampling pass under way
        self.switch = None
        self.step_passes = None
        self.patched = []  # (object, attribute, previous value or self if none) to undo

    def stand_aside(self, reason):
        if self.report.stand_aside(reason) and settings.console_summary(shared.opts):
            print(f"AutoLoRA: not applied, {reason}; generating as usual.")

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
    """`process`: read the arguments; on bad input make this generation fail with the message."""
    global _generation
    end()
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
    _generation = _adapter()(p, params)


def prepare_pass(p):
    """`process_before_every_sampling`."""
    if _generation is not None and _generation.p is p:
        _generation.prepare_pass(p)


def finish(p):
    """`postprocess`: print what AutoLoRA did, undo everything."""
    if _generation is not None and _generation.p is p:
        line = _generation.summary()
        if line and settings.console_summary(shared.opts):
            print(line)
    end()


def end():
    global _generation
    if _generation is not None:
        _generation.close()
        _generation = None


def _on_cfg_denoiser(params):
    if _generation is not None and _generation.handles(params.denoiser):
        _generation.on_cfg_denoiser(params)


def install_callbacks():
    """Registered once per script load; the WebUI drops them when it reloads scripts."""
    script_callbacks.on_cfg_denoiser(_on_cfg_denoiser)
    script_callbacks.on_script_unloaded(end)
