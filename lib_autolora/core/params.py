"""The one parameters type of AutoLoRA, shared by the UI, the API, infotext and scripts.

Everything about a parameter is said once, on its `Field` in FIELDS; the parameters type, the API's
aliases, infotext, the hires pass, the X/Y/Z axes, the settings and the accordion derive from them.
Positional order (UI components and the API's `args` list) is the order of FIELDS.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import Self

INFOTEXT_ENABLED = "AutoLoRA"
MEMORY_MODES = ("auto", "lean", "fast")
CFG_SCALE = ("cfg_scale", "CFG Scale")  # a control of the generation: its elem id after the tab's, its label
HIRES_CFG_SCALE = ("hr_cfg", "Hires CFG Scale")


@dataclasses.dataclass(frozen=True)
class Field:
    name: str           # attribute name and API key
    label: str          # UI label
    infotext: str       # infotext key
    default: object
    minimum: float | None = None
    maximum: float | None = None
    hint: str = ""      # one line under the control
    choices: tuple[str, ...] = ()
    step: float | None = None  # UI slider step
    # the generation's controls a 0 (None) value follows, as (elem id, label), first found wins; () = none
    follows: tuple[tuple[str, str], ...] = ()
    aliases: tuple[str, ...] = ()  # API keys that name it too
    hires_of: str | None = None  # the field whose value this one replaces in the hires. fix pass (with its own values)
    axis: str | None = None     # X/Y/Z plot axis label; None = no axis
    details: str = ""    # the Settings page's longer explanation; "" = the hint
    section: str = "main"  # where the accordion puts it: "main" (up front) or "more" (its closed More accordion)
    row: str | None = None      # fields next to each other with the same row share a row of the accordion

    @property
    def is_bool(self) -> bool:
        return isinstance(self.default, bool)

    def ui_form(self, value: object) -> object:
        """A value as the UI shows it: a scale that follows the generation's is 0 there."""
        return 0.0 if self.follows and value is None else value

    @property
    def kind(self) -> str:
        if self.choices:
            return "choice"
        return "bool" if self.is_bool else "number"

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.is_bool:
            return "true or false"
        text = f"a number from {self.minimum:g} to {self.maximum:g}"
        return text + " (0 or null = use the CFG Scale)" if self.follows else text


FIELDS = (
    Field("enabled", "Enable AutoLoRA", INFOTEXT_ENABLED, False, axis="Enabled",
          hint="Guide the LoRA model with the model without the prompt's LoRA networks."),
    Field("gamma", "AutoLoRA scale (gamma)", "AutoLoRA gamma", 1.5, 0.0, 10.0, step=0.05, axis="Gamma",
          hint="0 = model without LoRA, 1 = plain LoRA, >1 more variety (paper: 1.5)",
          details="0 = model without LoRA, 1 = plain LoRA generation, above 1 pushes away from the "
                  "base model (more variety). Paper default 1.5."),
    Field("base_cfg", "Base CFG (w1)", "AutoLoRA w1", None, 0.0, 30.0, step=0.5, follows=(CFG_SCALE,),
          aliases=("w1",), axis="Base CFG (w1)", row="cfg",
          hint="CFG of the model without LoRA; 0 = the CFG Scale",
          details="CFG scale of the model without LoRA. 0 = use the CFG Scale of the generation."),
    Field("lora_cfg", "LoRA CFG (w2)", "AutoLoRA w2", None, 0.0, 30.0, step=0.5, follows=(CFG_SCALE,),
          aliases=("w2",), axis="LoRA CFG (w2)", row="cfg",
          hint="CFG of the LoRA model; 0 = the CFG Scale",
          details="CFG scale of the LoRA model. 0 = use the CFG Scale of the generation."),
    Field("start", "Start", "AutoLoRA start", 0.0, 0.0, 1.0, step=0.01, axis="Start", row="range",
          hint="Fraction of sampling where AutoLoRA starts",
          details="Fraction of sampling where AutoLoRA starts; before it, plain LoRA generation with w2."),
    Field("end", "End", "AutoLoRA end", 1.0, 0.0, 1.0, step=0.01, axis="End", row="range",
          hint="Fraction of sampling where AutoLoRA ends",
          details="Fraction of sampling where AutoLoRA ends; after it, plain LoRA generation with w2."),
    Field("base_text_encoder", "Base uses the text encoder without LoRA", "AutoLoRA base TE", True, section="more",
          hint="Encode the prompt for the base model with the text encoder's LoRA switched off."),
    Field("hires", "Hires. fix pass", "AutoLoRA hires", "same", choices=("same", "own", "off"), axis="Hires. fix pass",
          section="more",
          hint="same = the values above; own = the hires values below; off = plain LoRA generation."),
    Field("hires_gamma", "Hires gamma", "AutoLoRA hires gamma", 1.5, 0.0, 10.0, step=0.05, hires_of="gamma",
          axis="Hires gamma", section="more", row="hires",
          hint="Gamma of the hires. fix pass",
          details="AutoLoRA scale of the hires. fix pass (when the hires. fix pass has its own values)."),
    Field("hires_base_cfg", "Hires base CFG (w1)", "AutoLoRA hires w1", None, 0.0, 30.0, step=0.5,
          follows=(HIRES_CFG_SCALE, CFG_SCALE), aliases=("hires_w1",), hires_of="base_cfg", axis="Hires base CFG (w1)",
          section="more", row="hires",
          hint="w1 of the hires. fix pass; 0 = the Hires CFG Scale",
          details="Base CFG of the hires. fix pass. 0 = use the Hires CFG Scale (the CFG Scale where there is none)."),
    Field("hires_lora_cfg", "Hires LoRA CFG (w2)", "AutoLoRA hires w2", None, 0.0, 30.0, step=0.5,
          follows=(HIRES_CFG_SCALE, CFG_SCALE), aliases=("hires_w2",), hires_of="lora_cfg", axis="Hires LoRA CFG (w2)",
          section="more", row="hires",
          hint="w2 of the hires. fix pass; 0 = the Hires CFG Scale",
          details="LoRA CFG of the hires. fix pass. 0 = use the Hires CFG Scale (the CFG Scale where there is none)."),
    Field("memory", "Memory", "AutoLoRA memory", "auto", choices=MEMORY_MODES, axis="Memory", section="more",
          row="memory",
          hint="lean = no copy of the LoRA'd layers, fast = a copy on the device, auto = fast where it fits",
          details="How the base pass gets the layers without LoRA. lean = no copy: it subtracts the LoRA's low-rank "
                  "term (LoRA, LoCon); fast = a copy of the LoRA'd layers on the model's device for the generation; "
                  "auto = fast where the device has room for the copy, else lean."),
    Field("batched", "Both passes in one batch", "AutoLoRA batched", False, axis="Batched", section="more",
          row="memory",
          hint="The base and LoRA rows of a step in one model call (lean path)",
          details="Evaluate the base and LoRA rows of a step in one model call (the lean path); can be faster on a "
                  "device with room to spare (small images, batch 1)."),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


def fields_but_enabled(fields: Iterable[Field] = FIELDS) -> tuple[Field, ...]:
    """The settings the enable flag switches on: every field but it (found by name, not by place)."""
    return tuple(f for f in fields if f.name != "enabled")


def api_aliases(fields: Iterable[Field] = FIELDS) -> dict[str, str]:
    """API alias -> the name of the field it names."""
    return {alias: f.name for f in fields for alias in f.aliases}


class AutoLoraParamError(ValueError):
    """Bad AutoLoRA input; the message names the parameter and the allowed values."""


def shown(value: object, limit: int = 60) -> str:
    """A value as a message quotes it: long input (a pasted document, nested junk) is cut short."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _bad(field: Field, value: object) -> AutoLoraParamError:
    return AutoLoraParamError(f"AutoLoRA: {field.name} must be {field.allowed()}, got {shown(value)}")


def _parse_bool(field: Field, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise _bad(field, value)


def _parse_choice(field: Field, value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in field.choices:
        return value.strip().lower()
    raise _bad(field, value)


def _parse_number(field: Field, value: object) -> float | None:
    if field.follows and value is None:
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
    assert field.minimum is not None and field.maximum is not None, f"the number field {field.name} has no range"
    if number is None or not math.isfinite(number) or not field.minimum <= number <= field.maximum:
        raise _bad(field, value)
    if field.follows and number == 0:
        return None
    return number


def parse_value(field: Field, value: object) -> object:
    return {"bool": _parse_bool, "choice": _parse_choice, "number": _parse_number}[field.kind](field, value)


def _named_values(named: Mapping[str, object], fields: Sequence[Field]) -> dict[str, object]:
    """Named values (field names or their API aliases) by field name; `enabled` defaults to true there,
    since sending settings means asking for AutoLoRA."""
    names, aliases = {f.name for f in fields}, api_aliases(fields)
    values: dict[str, object] = {}
    keys: dict[str, str] = {}
    for key, value in named.items():
        name = aliases.get(key, key)
        if name not in names:
            allowed = ", ".join([f.name for f in fields] + list(aliases))
            raise AutoLoraParamError(f"AutoLoRA: unknown key {shown(key)}; allowed keys: {allowed}")
        if name in keys:
            raise AutoLoraParamError(f"AutoLoRA: {name} is given twice, as {keys[name]!r} and {key!r}")
        values[name], keys[name] = value, key
    return values


def _enabled_field(fields: Iterable[Field]) -> Field:
    return next(f for f in fields if f.name == "enabled")


class ParamsMethods:
    """What the parameters type does; `params_type` makes the frozen dataclass of a field list on it,
    with `FIELDS` that list (its attributes, defaults and positional order)."""
    FIELDS: ClassVar[tuple[Field, ...]] = ()

    if TYPE_CHECKING:  # what params_type makes of FIELDS: its constructor and attributes
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

        def __init__(self, *args: object, **values: object) -> None: ...

        enabled: bool
        gamma: float
        base_cfg: float | None
        lora_cfg: float | None
        start: float
        end: float
        base_text_encoder: bool
        hires: str
        hires_gamma: float
        hires_base_cfg: float | None
        hires_lora_cfg: float | None
        memory: str
        batched: bool

    def __post_init__(self) -> None:
        for field in self.FIELDS:
            object.__setattr__(self, field.name, parse_value(field, getattr(self, field.name)))
        if self.start >= self.end:
            raise AutoLoraParamError(
                f"AutoLoRA: start must be less than end (both from 0 to 1), got start={self.start:g}, end={self.end:g}")

    @classmethod
    def from_args(cls, args: Iterable[object], defaults: Mapping[str, object] | None = None,
                  overrides: Mapping[str, object] | None = None) -> Self:
        """From the script's arguments: the positional values of the UI components or of the API's
        `args` list, or one object of named values first (the rest, the UI's defaults, is ignored).
        `defaults` (name -> value) replace built-in defaults, `overrides` (name -> value, an X/Y/Z
        cell's) replace given values. Disabled settings are not checked."""
        fields, args = cls.FIELDS, list(args)
        if args and isinstance(args[0], dict):
            values = {**(defaults or {}), "enabled": True, **_named_values(args[0], fields)}
        elif len(args) > len(fields):
            names = ", ".join(f.name for f in fields)
            raise AutoLoraParamError(f"AutoLoRA: expected at most {len(fields)} values ({names}), got {len(args)}")
        else:
            values = {**(defaults or {}), **{field.name: value for field, value in zip(fields, args)}}
        values.update(overrides or {})
        return cls(**values) if parse_value(_enabled_field(fields), values.get("enabled", False)) else cls()

    def for_pass(self, is_hires: bool) -> Self | None:
        """The settings of one sampling pass, or None where AutoLoRA is off for it."""
        if not is_hires or self.hires == "same":
            return self
        if self.hires == "off":
            return None
        return dataclasses.replace(self, **{f.hires_of: getattr(self, f.name) for f in self.FIELDS if f.hires_of})

    def to_args(self) -> list[object]:
        """Positional values in UI form (0 for a CFG scale that follows the generation's)."""
        return [f.ui_form(getattr(self, f.name)) for f in self.FIELDS]

    def scales(self, cfg_scale: float, multiplier: float = 1.0) -> tuple[float, float]:
        """(w1, w2) for a call the host guides with `cfg_scale`: each one set, times the host's scale
        multiplier (A1111's `cond_scale_miltiplier`, already in `cfg_scale`), else the host's scale itself."""
        def scale(w: float | None) -> float:
            return cfg_scale if w is None else w * multiplier
        return scale(self.base_cfg), scale(self.lora_cfg)

    def to_infotext(self) -> dict[str, object]:
        """Infotext entries: the enable flag and every value that differs from its default (a hires
        value only where the hires pass has its own)."""
        if not self.enabled:
            return {}
        entries: dict[str, object] = {INFOTEXT_ENABLED: True}
        for field in fields_but_enabled(self.FIELDS):
            value = getattr(self, field.name)
            if value != field.default and (self.hires == "own" or not field.hires_of):
                entries[field.infotext] = value
        return entries

    @classmethod
    def from_infotext(cls, entries: Mapping[str, object]) -> Self:
        """From parsed infotext; absent keys take their defaults, so text without AutoLoRA disables it.
        As with arguments, the settings of a disabled AutoLoRA are not checked."""
        if INFOTEXT_ENABLED not in entries or not parse_value(_enabled_field(cls.FIELDS), entries[INFOTEXT_ENABLED]):
            return cls()
        return cls(**{f.name: entries[f.infotext] for f in cls.FIELDS if f.infotext in entries})


def params_type(fields: Sequence[Field], name: str = "AutoLoraParams") -> type[ParamsMethods]:
    """The frozen parameters dataclass of `fields`: one attribute per field, with its default, in
    their order (so positional construction follows it)."""
    annotations = {"bool": bool, "number": float, "choice": str}
    attributes = [(f.name, annotations[f.kind], dataclasses.field(default=f.default)) for f in fields]
    made = dataclasses.make_dataclass(name, attributes, bases=(ParamsMethods,), namespace={"FIELDS": tuple(fields)},
                                      frozen=True)
    made.__module__ = __name__  # make_dataclass would name another module before Python 3.12
    return made


AutoLoraParams = params_type(FIELDS)
