"""The one parameters type of AutoLoRA, shared by the UI, the API, infotext and scripts.

Positional order (UI components and the API's `args` list) is the order of FIELDS.
"""
import dataclasses
import math

INFOTEXT_ENABLED = "AutoLoRA"
MEMORY_MODES = ("auto", "lean", "fast")


@dataclasses.dataclass(frozen=True)
class Field:
    name: str           # attribute name and API key
    label: str          # UI label
    infotext: str       # infotext key
    default: object
    minimum: float = None
    maximum: float = None
    hint: str = ""
    choices: tuple = ()
    step: float = None  # UI slider step

    @property
    def is_bool(self):
        return isinstance(self.default, bool)

    @property
    def follows_cfg(self):
        """CFG fields: None (0 in the UI) means "use the generation's CFG scale"."""
        return self.name.endswith("_cfg")

    def ui_form(self, value):
        """A value as the UI shows it: a CFG scale that follows the generation's is 0 there."""
        return 0.0 if self.follows_cfg and value is None else value

    @property
    def kind(self):
        if self.choices:
            return "choice"
        return "bool" if self.is_bool else "number"

    def allowed(self):
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.is_bool:
            return "true or false"
        text = f"a number from {self.minimum:g} to {self.maximum:g}"
        return text + " (0 or null = use the CFG Scale)" if self.follows_cfg else text


FIELDS = (
    Field("enabled", "Enable AutoLoRA", INFOTEXT_ENABLED, False,
          hint="Guide the LoRA model with the model without the prompt's LoRA networks."),
    Field("gamma", "AutoLoRA scale (gamma)", "AutoLoRA gamma", 1.5, 0.0, 10.0, step=0.05,
          hint="0 = model without LoRA, 1 = plain LoRA generation, above 1 pushes away from the "
               "base model (more variety). Paper default 1.5."),
    Field("base_cfg", "Base CFG (w1)", "AutoLoRA w1", None, 0.0, 30.0, step=0.5,
          hint="CFG scale of the model without LoRA. 0 = use the CFG Scale of the generation."),
    Field("lora_cfg", "LoRA CFG (w2)", "AutoLoRA w2", None, 0.0, 30.0, step=0.5,
          hint="CFG scale of the LoRA model. 0 = use the CFG Scale of the generation."),
    Field("start", "Start", "AutoLoRA start", 0.0, 0.0, 1.0, step=0.01,
          hint="Fraction of sampling where AutoLoRA starts; before it, plain LoRA generation with w2."),
    Field("end", "End", "AutoLoRA end", 1.0, 0.0, 1.0, step=0.01,
          hint="Fraction of sampling where AutoLoRA ends; after it, plain LoRA generation with w2."),
    Field("base_text_encoder", "Base uses the text encoder without LoRA", "AutoLoRA base TE", True,
          hint="Encode the prompt for the base model with the text encoder's LoRA switched off."),
    Field("hires", "Hires. fix pass", "AutoLoRA hires", "same", choices=("same", "own", "off"),
          hint="same = the values above; own = the hires values below; off = plain LoRA generation."),
    Field("hires_gamma", "Hires gamma", "AutoLoRA hires gamma", 1.5, 0.0, 10.0, step=0.05,
          hint="AutoLoRA scale of the hires. fix pass (when the hires. fix pass has its own values)."),
    Field("hires_base_cfg", "Hires base CFG (w1)", "AutoLoRA hires w1", None, 0.0, 30.0, step=0.5,
          hint="Base CFG of the hires. fix pass. 0 = use the Hires CFG Scale (the CFG Scale where there is none)."),
    Field("hires_lora_cfg", "Hires LoRA CFG (w2)", "AutoLoRA hires w2", None, 0.0, 30.0, step=0.5,
          hint="LoRA CFG of the hires. fix pass. 0 = use the Hires CFG Scale (the CFG Scale where there is none)."),
    Field("memory", "Memory", "AutoLoRA memory", "auto", choices=MEMORY_MODES,
          hint="How the base pass gets the layers without LoRA. lean = no copy: it subtracts the LoRA's low-rank "
               "term (LoRA, LoCon); fast = a copy of the LoRA'd layers on the model's device for the generation; "
               "auto = fast where the device has room for the copy, else lean."),
    Field("batched", "Both passes in one batch", "AutoLoRA batched", False,
          hint="Evaluate the base and LoRA rows of a step in one model call (the lean path); can be faster on a "
               "device with room to spare (small images, batch 1)."),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
ALIASES = {"w1": "base_cfg", "w2": "lora_cfg", "hires_w1": "hires_base_cfg", "hires_w2": "hires_lora_cfg"}
HIRES_FIELDS = ("hires_gamma", "hires_base_cfg", "hires_lora_cfg")


class AutoLoraParamError(ValueError):
    """Bad AutoLoRA input; the message names the parameter and the allowed values."""


def shown(value, limit=60):
    """A value as a message quotes it: long input (a pasted document, nested junk) is cut short."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _bad(field, value):
    return AutoLoraParamError(f"AutoLoRA: {field.name} must be {field.allowed()}, got {shown(value)}")


def _parse_bool(field, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise _bad(field, value)


def _parse_choice(field, value):
    if isinstance(value, str) and value.strip().lower() in field.choices:
        return value.strip().lower()
    raise _bad(field, value)


def _parse_number(field, value):
    if field.follows_cfg and value is None:
        return None
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            pass
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number) or not field.minimum <= number <= field.maximum:
        raise _bad(field, value)
    if field.follows_cfg and number == 0:
        return None
    return number


def parse_value(field, value):
    return {"bool": _parse_bool, "choice": _parse_choice, "number": _parse_number}[field.kind](field, value)


def _named_values(named):
    """Named values (keys of FIELDS or ALIASES) by field name; `enabled` defaults to true there,
    since sending settings means asking for AutoLoRA."""
    values, keys = {}, {}
    for key, value in named.items():
        name = ALIASES.get(key, key)
        if name not in FIELDS_BY_NAME:
            allowed = ", ".join(list(FIELDS_BY_NAME) + list(ALIASES))
            raise AutoLoraParamError(f"AutoLoRA: unknown key {shown(key)}; allowed keys: {allowed}")
        if name in keys:
            raise AutoLoraParamError(f"AutoLoRA: {name} is given twice, as {keys[name]!r} and {key!r}")
        values[name], keys[name] = value, key
    return values


@dataclasses.dataclass(frozen=True)
class AutoLoraParams:
    enabled: bool = False
    gamma: float = 1.5
    base_cfg: float = None
    lora_cfg: float = None
    start: float = 0.0
    end: float = 1.0
    base_text_encoder: bool = True
    hires: str = "same"
    hires_gamma: float = 1.5
    hires_base_cfg: float = None
    hires_lora_cfg: float = None
    memory: str = "auto"
    batched: bool = False

    def __post_init__(self):
        for field in FIELDS:
            object.__setattr__(self, field.name, parse_value(field, getattr(self, field.name)))
        if self.start >= self.end:
            raise AutoLoraParamError(
                f"AutoLoRA: start must be less than end (both from 0 to 1), got start={self.start:g}, end={self.end:g}")

    @classmethod
    def from_args(cls, args, defaults=None, overrides=None):
        """From the script's arguments: the positional values of the UI components or of the API's
        `args` list, or one object of named values first (the rest, the UI's defaults, is ignored).
        `defaults` (name -> value) replace built-in defaults, `overrides` (name -> value, an X/Y/Z
        cell's) replace given values. Disabled settings are not checked."""
        args = list(args)
        if args and isinstance(args[0], dict):
            values = {**(defaults or {}), "enabled": True, **_named_values(args[0])}
        elif len(args) > len(FIELDS):
            names = ", ".join(f.name for f in FIELDS)
            raise AutoLoraParamError(f"AutoLoRA: expected at most {len(FIELDS)} values ({names}), got {len(args)}")
        else:
            values = {**(defaults or {}), **{field.name: value for field, value in zip(FIELDS, args)}}
        values.update(overrides or {})
        return cls(**values) if parse_value(FIELDS[0], values.get("enabled", False)) else cls()

    def for_pass(self, is_hires):
        """The settings of one sampling pass, or None where AutoLoRA is off for it."""
        if not is_hires or self.hires == "same":
            return self
        if self.hires == "off":
            return None
        return dataclasses.replace(self, gamma=self.hires_gamma, base_cfg=self.hires_base_cfg,
                                   lora_cfg=self.hires_lora_cfg)

    def to_args(self):
        """Positional values in UI form (0 for a CFG scale that follows the generation's)."""
        return [f.ui_form(getattr(self, f.name)) for f in FIELDS]

    def base_scale(self, cfg_scale):
        return cfg_scale if self.base_cfg is None else self.base_cfg

    def lora_scale(self, cfg_scale):
        return cfg_scale if self.lora_cfg is None else self.lora_cfg

    def to_infotext(self):
        """Infotext entries: the enable flag and every value that differs from its default."""
        if not self.enabled:
            return {}
        entries = {INFOTEXT_ENABLED: True}
        for field in FIELDS[1:]:
            value = getattr(self, field.name)
            if value != field.default and (self.hires == "own" or field.name not in HIRES_FIELDS):
                entries[field.infotext] = value
        return entries

    @classmethod
    def from_infotext(cls, entries):
        """From parsed infotext; absent keys take their defaults, so text without AutoLoRA disables it.
        As with arguments, the settings of a disabled AutoLoRA are not checked."""
        if INFOTEXT_ENABLED not in entries or not parse_value(FIELDS[0], entries[INFOTEXT_ENABLED]):
            return cls()
        return cls(**{f.name: entries[f.infotext] for f in FIELDS if f.infotext in entries})
