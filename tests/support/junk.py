"""Hypothesis strategies for malformed AutoLoRA input: `alwayson_scripts` args by position and by
name, `args` that is no list, and the AutoLoRA part of pasted infotext. Plausible values are mixed
in, so accepted requests are drawn as often as rejected ones. Each strategy yields (class, value):
the class says what kind of input it is, for the counts a test reports."""
from hypothesis import strategies as st

from tests.support.api_oracle import ALIASES, CHOICES, DEFAULTS, INFOTEXT, KEYS, RANGES

HUGE = (10 ** 400, -10 ** 400, 1e308, -1e308, 2 ** 63, -2 ** 63)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-40, max_value=40), st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=30),
    st.text(max_size=12),
    st.sampled_from(["1.5", " 2 ", "0", "1", "true", "FALSE", "True ", "same", " OWN", "off", "nan", "inf", "-1",
                     "1e999", "0x10", "", " "]),
    st.text(alphabet="ab1.", min_size=2000, max_size=4000),  # very long strings
)
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=8)


def plausible(key):
    """A value that is often right for `key`."""
    if isinstance(DEFAULTS[key], bool):
        return st.booleans()
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    if key.endswith("_cfg"):
        return st.one_of(st.none(), st.floats(min_value=0, max_value=RANGES[key]))
    return st.floats(min_value=0, max_value=RANGES[key])


def value_for(key):
    return st.one_of(plausible(key), plausible(key), junk)


@st.composite
def positional(draw):
    """A list of every length, each position right or junk."""
    length = draw(st.integers(min_value=0, max_value=len(KEYS) + 4))
    keys = list(KEYS) + ["extra"] * 4
    values = [draw(value_for(keys[i]) if i < len(KEYS) else junk) for i in range(length)]
    if values and draw(st.booleans()):
        values[0] = True  # mostly enabled, so the values behind it are checked
    return "positional", values


NAMED_KEYS = st.one_of(st.sampled_from(KEYS), st.sampled_from(list(ALIASES)),
                       st.sampled_from(["gama", "Gamma", "w3", "", " gamma", "enabled "]),
                       st.text(max_size=8), st.text(alphabet="k", min_size=300, max_size=400))


@st.composite
def named(draw):
    """One object of named values (known keys, aliases, unknown keys, missing keys), maybe followed by junk."""
    keys = draw(st.lists(NAMED_KEYS, max_size=6, unique=True))
    settings = {key: draw(value_for(ALIASES.get(key, key)) if ALIASES.get(key, key) in KEYS else junk)
                for key in keys}
    tail = draw(st.lists(junk, max_size=3))
    return "named", [settings] + tail


not_a_list = st.tuples(st.just("args not a list"), st.one_of(
    st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3), scalars.filter(lambda v: not isinstance(v, str)),
    st.sampled_from(["", "True", "x"])))

args = st.one_of(positional(), named())

INFOTEXT_VALUES = st.one_of(
    st.sampled_from(["True", "False", "true", "1", "0", "yes", "same", "own", "off", "OFF", "nan", "inf", "-inf",
                     "-1", "1e999", "99", "2.5", "0.0", "0.3", "0.7", "1.0", "junk"]),
    st.floats(min_value=-5, max_value=40).map(lambda v: f"{v:g}"),
    st.text(alphabet="abcyz0123456789.", min_size=1, max_size=12),  # no "x": the WebUI reads "2x3" as a size
    st.text(alphabet="z", min_size=1000, max_size=1500),
)
INFOTEXT_KEYS = st.one_of(st.sampled_from(list(INFOTEXT)), st.sampled_from(["AutoLoRA gama", "AutoLoRA w3"]))


@st.composite
def infotext_entries(draw):
    """The AutoLoRA entries of an infotext (key -> text as the infotext holds it)."""
    keys = draw(st.lists(INFOTEXT_KEYS, max_size=7, unique=True))
    if draw(st.integers(0, 3)):  # mostly with the enabling key
        keys = ["AutoLoRA"] + [k for k in keys if k != "AutoLoRA"]
    entries = {key: draw(INFOTEXT_VALUES) for key in keys}
    if "AutoLoRA" in entries and draw(st.booleans()):
        entries["AutoLoRA"] = "True"
    return "infotext", entries
