"""X/Y/Z plot axes. Each cell runs on its own copy of the processing object, so an axis sets an
`autolora_<field>` attribute there and the script reads it as an override of the accordion: nothing
outlives the cell."""
from lib_autolora.core.params import FIELDS_BY_NAME

PREFIX = "autolora_"
LABEL = "[AutoLoRA] "
AXES = {  # axis label -> field
    "Enabled": "enabled", "Gamma": "gamma", "Base CFG (w1)": "base_cfg", "LoRA CFG (w2)": "lora_cfg",
    "Start": "start", "End": "end", "Hires. fix pass": "hires", "Hires gamma": "hires_gamma",
    "Hires base CFG (w1)": "hires_base_cfg", "Hires LoRA CFG (w2)": "hires_lora_cfg", "Memory": "memory",
    "Batched": "batched",
}


def overrides(p):
    """The values X/Y/Z cells set on `p`, by field name."""
    return {name: getattr(p, PREFIX + name) for name in FIELDS_BY_NAME if hasattr(p, PREFIX + name)}


def _apply(name):
    def apply(p, value, values):
        setattr(p, PREFIX + name, value)
        if name.startswith("hires_"):  # a hires value is only used when the hires pass has its own
            setattr(p, PREFIX + "hires", "own")
    return apply


def _axis(xyz_grid, label, name):
    field = FIELDS_BY_NAME[name]
    if field.kind == "number":
        return xyz_grid.AxisOption(LABEL + label, float, _apply(name))
    choices = ("True", "False") if field.kind == "bool" else field.choices
    return xyz_grid.AxisOption(LABEL + label, str, _apply(name), choices=lambda: list(choices))


def add_axes(xyz_grid):
    """Adds the axes to the X/Y/Z plot script's module, once."""
    if any(option.label.startswith(LABEL) for option in xyz_grid.axis_options):
        return
    xyz_grid.axis_options.extend(_axis(xyz_grid, label, name) for label, name in AXES.items())
