"""Tier 1: what the WebUI's settings and X/Y/Z plot get from the parameters' fields, the memory mode
among them (lib_autolora.webui.settings and .xyz import no WebUI)."""
import types

from lib_autolora.core.params import FIELDS, AutoLoraParams
from lib_autolora.webui import settings, xyz


class AxisOption:
    def __init__(self, label, type, apply, choices=None):
        self.label, self.type, self.apply, self.choices = label, type, apply, choices


def xyz_module():
    return types.SimpleNamespace(AxisOption=AxisOption, axis_options=[])


def test_the_axes_are_added_once_and_memory_offers_its_modes():
    module = xyz_module()
    xyz.add_axes(module)
    xyz.add_axes(module)
    labels = [option.label for option in module.axis_options]
    assert len(labels) == len(set(labels)) == len(xyz.axes())
    assert {"memory", "batched"} <= {field.name for field in xyz.axes()}
    memory = next(option for option in module.axis_options if option.label == "[AutoLoRA] Memory")
    assert memory.choices() == ["auto", "lean", "fast"]


def test_an_axis_value_overrides_the_accordion_for_its_cell_only():
    module = xyz_module()
    xyz.add_axes(module)
    by_label = {option.label: option for option in module.axis_options}
    cell, other = types.SimpleNamespace(), types.SimpleNamespace()
    by_label["[AutoLoRA] Memory"].apply(cell, "lean", None)
    by_label["[AutoLoRA] Batched"].apply(cell, "True", None)
    assert xyz.overrides(cell) == {"memory": "lean", "batched": "True"}
    assert xyz.overrides(other) == {}
    assert AutoLoraParams.from_args([True], overrides=xyz.overrides(cell)) == \
        AutoLoraParams(True, memory="lean", batched=True)


def test_settings_give_the_default_memory_mode():
    opts = types.SimpleNamespace(data={settings.key(FIELDS[-2]): "fast"})
    defaults = settings.defaults(opts)
    assert defaults["memory"] == "fast" and defaults["batched"] is False
    assert AutoLoraParams.from_args([True], defaults).memory == "fast"
    assert AutoLoraParams.from_args([{"memory": "lean"}], defaults).memory == "lean"
