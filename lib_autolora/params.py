"""The one parameters type of AutoLoRA, shared by the UI, the API, infotext and scripts.

Positional order (UI components and the API's `args` list) is the order of FIELDS.
"""
import dataclasses
import math

INFOTEXT_ENABLED = "AutoLoRA"


@dataclasses.dataclass(frozen=True)
class Field:
    name: str           # attribute name and API key
    label: str          # UI label
    infotext: str       # infotext key
    default: object
    minimum: float = None
    maximum: float = None
    hint: str = ""

    @property
    def is_bool(self):
        return isinstance(self.default, bool)

    @property
    def follows_cfg(self):
        """CFG fields: None (0 in the UI) means "use the generation's CFG scale"."""
        return self.name in ("base_cfg", "lora_cfg")


FIELDS = (
    Field("enabled", "Enable AutoLoRA", INFOTEXT_ENABLED, False,
          hint="Guide the LoRA model with the model without the prompt's LoRA networks."),
    Field("gamma", "AutoLoRA scale (gamma)", "AutoLoRA gamma", 1.5, 0.0, 10.0,
          hint="0 = model without LoRA, 1 = plain LoRA generation, above 1 pushes away from the "
               "base model (more variety). Paper default 1.5."),
    Field("base_cfg", "Base CFG (w1)", "AutoLoRA w1", None, 0.0, 30.0,
          hint="CFG scale of the model without LoRA. 0 = use the CFG Scale of the generation."),
    Field("lora_cfg", "LoRA CFG (w2)", "AutoLoRA w2", None, 0.0, 30.0,
          hint="CFG scale of the LoRA model. 0 = use the CFG Scale of the generation."),
    Field("start", "Start", "AutoLoRA start", 0.0, 0.0, 1.0,
          hint="Fraction of sampling where AutoLoRA starts; before it, plain LoRA generation with w2."),
    Field("end", "End", "AutoLoRA end", 1.0, 0.0, 1.0,
          hint="Fraction of sampling where AutoLoRA ends; after it, plain LoRA generation with w2."),
    Field("base_text_encoder", "Base uses the text encoder without LoRA", "AutoLoRA base TE", True,
          hint="Encode the prompt for the base model with the text encoder's LoRA switched off."),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


class AutoLoraParamError(ValueError):
    """Bad AutoLoRA input; the message names the parameter and the allowed values."""


def _parse_bool(field, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise AutoLoraParamError(f"AutoLoRA: {field.name} must be true or false, got {value!r}")


def _parse_number(field, value):
    allowed = f"a number from {field.minimum:g} to {field.maximum:g}"
    if field.follows_cfg:
        if value is None:
            return None
        allowed += " (0 or null = use the CFG Scale)"
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number) or not field.minimum <= number <= field.maximum:
        raise AutoLoraParamError(f"AutoLoRA: {field.name} must be {allowed}, got {value!r}")
    if field.follows_cfg and number == 0:
        return None
    return number


def parse_value(field, value):
    return _parse_bool(field, value) if field.is_bool else _parse_number(field, value)


@dataclasses.dataclass(frozen=True)
class AutoLoraParams:
    enabled: bool = False
    gamma: float = 1.5
    base_cfg: float = None
    lora_cfg: float = None
    start: float = 0.0
    end: float = 1.0
    base_text_encoder: bool = True

    def __post_init__(self):
        for field in FIELDS:
            object.__setattr__(self, field.name, parse_value(field, getattr(self, field.name)))
        if self.start >= self.end:
            raise AutoLoraParamError(
                f"AutoLoRA: start must be less than end (both from 0 to 1), got start={self.start:g}, end={self.end:g}")

    @classmethod
    def from_args(cls, args):
        """From the positional values of the UI components or the API's `args` list."""
        args = list(args)
        if len(args) > len(FIELDS):
            raise AutoLoraParamError(
                f"AutoLoRA: expected at most {len(FIELDS)} values ({', '.join(f.name for f in FIELDS)}), got {len(args)}")
        return cls(**{field.name: value for field, value in zip(FIELDS, args)})

    def to_args(self):
        """Positional values in UI form (0 for a CFG scale that follows the generation's)."""
        return [0.0 if f.follows_cfg and getattr(self, f.name) is None else getattr(self, f.name) for f in FIELDS]

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
            if value != field.default:
                entries[field.infotext] = value
        return entries

    @classmethod
    def from_infotext(cls, entries):
        """From parsed infotext; absent keys take their defaults, so text without AutoLoRA disables it."""
        if INFOTEXT_ENABLED not in entries:
            return cls()
        return cls(**{f.name: entries[f.infotext] for f in FIELDS if f.infotext in entries})
