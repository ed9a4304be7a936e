"""X/Y/Z plot axes, one per field that names one. Each cell runs on its own copy of the processing
object, so an axis sets an `autolora_<field>` attribute there and the script reads it as an override
of the accordion: nothing outlives the cell."""
from __future__ import annotations

from collections.abc import Callable, Iterable

from lib_autolora.core.params import FIELDS, Field
from lib_autolora.webui.host_objects import Processing, XyzGrid

PREFIX = "autolora_"
LABEL = "[AutoLoRA] "


def axes(fields: Iterable[Field] = FIELDS) -> list[Field]:
    """The fields that have an X/Y/Z axis, in their order."""
    return [field for field in fields if field.axis]


def overrides(p: Processing, fields: Iterable[Field] = FIELDS) -> dict[str, object]:
    """The values X/Y/Z cells set on `p`, by field name."""
    return {f.name: getattr(p, PREFIX + f.name) for f in fields if hasattr(p, PREFIX + f.name)}


def _apply(field: Field) -> Callable[[Processing, object, object], None]:
    def apply(p: Processing, value: object, values: object) -> None:
        setattr(p, PREFIX + field.name, value)
        if field.hires_of:  # a hires value is only used when the hires pass has its own
            setattr(p, PREFIX + "hires", "own")
    return apply


def _axis(xyz_grid: XyzGrid, field: Field) -> object:
    if field.kind == "number":
        return xyz_grid.AxisOption(f"{LABEL}{field.axis}", float, _apply(field))
    choices = ("True", "False") if field.kind == "bool" else field.choices
    return xyz_grid.AxisOption(f"{LABEL}{field.axis}", str, _apply(field), choices=lambda: list(choices))


def add_axes(xyz_grid: XyzGrid, fields: Iterable[Field] = FIELDS) -> None:
    """Adds the axes to the X/Y/Z plot script's module, once."""
    if any(option.label.startswith(LABEL) for option in xyz_grid.axis_options):
        return
    xyz_grid.axis_options.extend(_axis(xyz_grid, field) for field in axes(fields))
