"""The answer the README's API section (with docs/api.md's exact rules) promises for AutoLoRA's
`alwayson_scripts` arguments and for pasted infotext, written from that text and not from
lib_autolora, so tests can hold the library (tier 1) and a running WebUI (live) to it.

The rules, as they are stated there:
- `args` is a list: one object of named values first (the rest of the list is ignored), or values
  by position in the order of the key table; positions not given take their defaults, and a
  WebUI passes on at most as many positions as there are keys (it drops the rest).
- By name: an unknown key, or a key given twice (as itself and as its alias), is rejected naming it;
  `enabled` defaults to true; by position it defaults to false.
- Disabled: nothing else is checked.
- Enabled: every value must have its type and range, else the request is rejected naming the key;
  `start` < `end`.
- Accepted forms: booleans are true/false, "true"/"false" (any case) or 0/1; numbers are numbers or
  strings holding one, finite; choices are strings, any case; CFG keys take null or 0 for "use the
  CFG Scale".
- Infotext: without the `AutoLoRA` key, or with it false, AutoLoRA stays disabled; else its keys are
  read as above.
"""
import dataclasses
import math

KEYS = ("enabled", "gamma", "base_cfg", "lora_cfg", "start", "end", "base_text_encoder", "hires",
        "hires_gamma", "hires_base_cfg", "hires_lora_cfg", "memory", "batched")
ALIASES = {"w1": "base_cfg", "w2": "lora_cfg", "hires_w1": "hires_base_cfg", "hires_w2": "hires_lora_cfg"}
DEFAULTS = {"enabled": False, "gamma": 1.5, "base_cfg": None, "lora_cfg": None, "start": 0.0, "end": 1.0,
            "base_text_encoder": True, "hires": "same", "hires_gamma": 1.5, "hires_base_cfg": None,
            "hires_lora_cfg": None, "memory": "auto", "batched": False}
RANGES = {"gamma": 10, "hires_gamma": 10, "start": 1, "end": 1,
          "base_cfg": 30, "lora_cfg": 30, "hires_base_cfg": 30, "hires_lora_cfg": 30}
CHOICES = {"hires": ("same", "own", "off"), "memory": ("auto", "lean", "fast")}
INFOTEXT = {"AutoLoRA": "enabled", "AutoLoRA gamma": "gamma", "AutoLoRA w1": "base_cfg", "AutoLoRA w2": "lora_cfg",
            "AutoLoRA start": "start", "AutoLoRA end": "end", "AutoLoRA base TE": "base_text_encoder",
            "AutoLoRA hires": "hires", "AutoLoRA hires gamma": "hires_gamma", "AutoLoRA hires w1": "hires_base_cfg",
            "AutoLoRA hires w2": "hires_lora_cfg", "AutoLoRA memory": "memory", "AutoLoRA batched": "batched"}
INVALID = object()


@dataclasses.dataclass
class Answer:
    """`settings` (key -> value) when accepted and enabled, {} when accepted and disabled;
    `bad_keys`: the keys any of which a rejection may name (empty when accepted)."""
    settings: dict = dataclasses.field(default_factory=dict)
    bad_keys: frozenset = frozenset()

    @property
    def accepted(self):
        return not self.bad_keys

    @property
    def enabled(self):
        return bool(self.settings)


def _boolean(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return INVALID


def _number(key, value):
    if key.endswith("_cfg") and value is None:
        return None
    number = INVALID
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e300 else INVALID
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = INVALID
    if number is INVALID or not math.isfinite(number) or not 0 <= number <= RANGES[key]:
        return INVALID
    return None if key.endswith("_cfg") and number == 0 else number


def _choice(key, value):
    if isinstance(value, str) and value.strip().lower() in CHOICES[key]:
        return value.strip().lower()
    return INVALID


def read(key, value):
    """A value in its accepted form, or INVALID."""
    if isinstance(DEFAULTS[key], bool):
        return _boolean(value)
    if key in CHOICES:
        return _choice(key, value)
    return _number(key, value)


def _checked(values):
    """The answer for the values of an enabled request."""
    settings = {key: read(key, value) for key, value in values.items()}
    bad = frozenset(key for key, value in settings.items() if value is INVALID)
    if bad:
        return Answer(bad_keys=bad)
    if settings["start"] >= settings["end"]:
        return Answer(bad_keys=frozenset({"start"}))
    return Answer(settings=settings)


def _named(named):
    values, bad = {}, set()
    for key, value in named.items():
        name = ALIASES.get(key, key)
        if name not in DEFAULTS:
            bad.add(key)
        elif name in values:
            bad.add(name)
        values[name] = value
    if bad:
        return Answer(bad_keys=frozenset(bad))
    values = {**DEFAULTS, "enabled": True, **values}
    enabled = read("enabled", values["enabled"])
    if enabled is INVALID:
        return Answer(bad_keys=frozenset({"enabled"}))
    return _checked(values) if enabled else Answer()


def expect_args(args, positions=None):
    """The answer for an `args` list. `positions`: how many positions the WebUI passes on (it drops
    the rest); None for a direct call, which rejects a list longer than the keys naming the count."""
    args = list(args)
    if args and isinstance(args[0], dict):
        return _named(args[0])
    if positions is not None:
        args = args[:positions]
    elif len(args) > len(KEYS):
        return Answer(bad_keys=frozenset({"values"}))
    values = {**DEFAULTS, **dict(zip(KEYS, args))}
    enabled = read("enabled", values["enabled"])
    if enabled is INVALID:
        return Answer(bad_keys=frozenset({"enabled"}))
    return _checked(values) if enabled else Answer()


def expect_infotext(entries):
    """The answer for parsed infotext (infotext key -> text)."""
    if "AutoLoRA" not in entries:
        return Answer()
    values = {**DEFAULTS, **{INFOTEXT[key]: value for key, value in entries.items() if key in INFOTEXT}}
    enabled = read("enabled", values["enabled"])
    if enabled is INVALID:
        return Answer(bad_keys=frozenset({"enabled"}))
    return _checked(values) if enabled else Answer()
