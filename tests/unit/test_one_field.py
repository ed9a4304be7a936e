"""Tier 1: a parameter is one `Field`. A scale and its hires variant, added to the fields here, show up
in everything derived from them: the parameters type (by name, default, parsing, range), positional
args, infotext, API keys and aliases, X/Y/Z axes, settings, the accordion's layout, the page's follow
table and the hires pass; and the real fields give the tables the WebUI has always had. Nothing here
imports gradio or the WebUI."""
import dataclasses
import html
import json
import pathlib
import re
import types

import pytest

from lib_autolora.core.params import (
    CFG_SCALE,
    FIELDS,
    HIRES_CFG_SCALE,
    AutoLoraParamError,
    Field,
    api_aliases,
    fields_but_enabled,
    params_type,
)
from lib_autolora.webui import accordion, settings, xyz
from tests.unit.test_webui_fields import xyz_module

BOOST = Field("boost_cfg", "Boost CFG", "AutoLoRA boost", 4.0, 0.0, 20.0, step=0.5, follows=(CFG_SCALE,),
              aliases=("w3",), axis="Boost CFG", section="more", row="boost", hint="0 = the CFG Scale")
HIRES_BOOST = Field("hires_boost_cfg", "Hires boost CFG", "AutoLoRA hires boost", None, 0.0, 20.0, step=0.5,
                    follows=(HIRES_CFG_SCALE, CFG_SCALE), aliases=("hires_w3",), hires_of="boost_cfg",
                    axis="Hires boost CFG", section="more", row="boost", hint="0 = the Hires CFG Scale",
                    details="Boost CFG of the hires. fix pass; 0 = the Hires CFG Scale, else the CFG Scale.")
WITH_BOOST = FIELDS + (BOOST, HIRES_BOOST)
Params = params_type(WITH_BOOST)
JAVASCRIPT = pathlib.Path(__file__).resolve().parents[2] / "javascript" / "autolora.js"


def test_the_parameters_type_takes_it_by_name_with_its_default_parsed_and_range_checked():
    assert (Params().boost_cfg, Params().hires_boost_cfg) == (4.0, None)
    assert Params(True, boost_cfg="6").boost_cfg == 6.0
    assert Params(True, boost_cfg=0).boost_cfg is None  # 0 follows the CFG scale
    with pytest.raises(AutoLoraParamError, match=r"boost_cfg must be a number from 0 to 20 \(0 or null = use"):
        Params(True, boost_cfg=25)
    params = Params(True, memory="lean", boost_cfg=6)
    assert dataclasses.replace(params, boost_cfg=7) == Params(True, memory="lean", boost_cfg=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.boost_cfg = 1.0


def test_positional_args_take_it_in_field_order():
    params = Params(True, boost_cfg=6, hires_boost_cfg=3)
    args = params.to_args()
    assert len(args) == len(WITH_BOOST) and args[-2:] == [6.0, 3.0]
    assert Params.from_args(args) == params
    assert Params(True, hires_boost_cfg=None).to_args()[-1] == 0.0
    with pytest.raises(AutoLoraParamError, match=r"at most 15 values \(.*, batched, boost_cfg, hires_boost_cfg\)"):
        Params.from_args(args + [1])


def test_infotext_writes_and_reads_it_and_its_hires_variant_only_where_the_hires_pass_has_its_own():
    same = Params(True, boost_cfg=6, hires_boost_cfg=3)
    assert same.to_infotext() == {"AutoLoRA": True, "AutoLoRA boost": 6.0}
    own = dataclasses.replace(same, hires="own")
    assert own.to_infotext() == {"AutoLoRA": True, "AutoLoRA boost": 6.0, "AutoLoRA hires": "own",
                                 "AutoLoRA hires boost": 3.0}
    assert Params.from_infotext({key: str(value) for key, value in own.to_infotext().items()}) == own


def test_the_hires_pass_takes_its_hires_variant_where_it_has_its_own_values():
    own = Params(True, boost_cfg=6, hires="own", hires_boost_cfg=2)
    assert own.for_pass(is_hires=False).boost_cfg == 6.0
    assert (own.for_pass(is_hires=True).boost_cfg, own.for_pass(is_hires=True).gamma) == (2.0, own.hires_gamma)
    assert Params(True, boost_cfg=6, hires_boost_cfg=2).for_pass(is_hires=True).boost_cfg == 6.0


def test_the_api_takes_it_by_name_and_by_alias():
    assert Params.from_args([{"boost_cfg": 6}]) == Params.from_args([{"w3": 6}]) == Params(True, boost_cfg=6)
    assert Params.from_args([{"hires_w3": 2}]).hires_boost_cfg == 2.0
    with pytest.raises(AutoLoraParamError, match="boost_cfg is given twice, as 'boost_cfg' and 'w3'"):
        Params.from_args([{"boost_cfg": 6, "w3": 7}])
    with pytest.raises(AutoLoraParamError, match=r"keys: .*, boost_cfg, hires_boost_cfg, w1, .*, w3, hires_w3$"):
        Params.from_args([{"bost_cfg": 6}])


def test_the_xyz_plot_has_its_axes_and_its_hires_axis_gives_the_hires_pass_its_own_values():
    module = xyz_module()
    xyz.add_axes(module, WITH_BOOST)
    by_label = {option.label: option for option in module.axis_options}
    assert list(by_label)[-2:] == ["[AutoLoRA] Boost CFG", "[AutoLoRA] Hires boost CFG"]
    cell = types.SimpleNamespace()
    by_label["[AutoLoRA] Boost CFG"].apply(cell, 6.0, None)
    by_label["[AutoLoRA] Hires boost CFG"].apply(cell, 2.0, None)
    overrides = xyz.overrides(cell, WITH_BOOST)
    assert overrides == {"boost_cfg": 6.0, "hires": "own", "hires_boost_cfg": 2.0}
    params = Params.from_args([True], overrides=overrides)
    assert (params.for_pass(is_hires=False).boost_cfg, params.for_pass(is_hires=True).boost_cfg) == (6.0, 2.0)


class OptionInfo:
    def __init__(self, default, label, component=None, args=None, section=None):
        self.default, self.component, self.args = default, component, args

    def info(self, text):
        self.text = text
        return self


def test_the_settings_give_its_default_and_explain_it():
    assert settings.defaults(types.SimpleNamespace(data={}), WITH_BOOST)["boost_cfg"] == 4.0
    opts = types.SimpleNamespace(data={"autolora_default_boost_cfg": 2.5})
    assert Params.from_args([True], settings.defaults(opts, WITH_BOOST)).boost_cfg == 2.5
    added = {}
    shared = types.SimpleNamespace(OptionInfo=OptionInfo, opts=types.SimpleNamespace(
        add_option=lambda key, info: added.setdefault(key, info)))
    settings.add_settings(shared, types.SimpleNamespace(Slider="slider", Radio="radio", Checkbox="checkbox"),
                          WITH_BOOST)
    boost, hires_boost = added["autolora_default_boost_cfg"], added["autolora_default_hires_boost_cfg"]
    assert (boost.default, boost.component, boost.args["maximum"], boost.text) == (4.0, "slider", 20.0, BOOST.hint)
    assert (hires_boost.default, hires_boost.text) == (0.0, HIRES_BOOST.details)


def test_the_accordion_puts_them_where_their_fields_say():
    layout = accordion.sections(WITH_BOOST)
    assert [field.name for field in layout["more"][-1]] == ["boost_cfg", "hires_boost_cfg"]
    assert all(BOOST not in row for row in layout["main"])


def follow_table_on_the_page(fields):
    """The table the page's script reads from the notice element's content."""
    attribute = re.fullmatch(r'<div class="autolora-follows" hidden data-follows="([^"]*)"></div>',
                             accordion.notice_html(fields))
    return json.loads(html.unescape(attribute.group(1)))


def test_the_page_learns_which_scales_they_follow():
    table = follow_table_on_the_page(WITH_BOOST)
    assert table["boost_cfg"] == [["cfg_scale", "CFG Scale"]]
    assert table["hires_boost_cfg"] == [["hr_cfg", "Hires CFG Scale"], ["cfg_scale", "CFG Scale"]]


# -- the real fields: the tables the WebUI has always had --

def test_the_real_fields_give_the_axes_aliases_and_follow_table_as_before():
    assert [field.axis for field in xyz.axes()] == [
        "Enabled", "Gamma", "Base CFG (w1)", "LoRA CFG (w2)", "Start", "End", "Hires. fix pass", "Hires gamma",
        "Hires base CFG (w1)", "Hires LoRA CFG (w2)", "Memory", "Batched"]
    assert api_aliases() == {"w1": "base_cfg", "w2": "lora_cfg", "hires_w1": "hires_base_cfg",
                             "hires_w2": "hires_lora_cfg"}
    hires = [["hr_cfg", "Hires CFG Scale"], ["cfg_scale", "CFG Scale"]]
    assert follow_table_on_the_page(FIELDS) == {"base_cfg": [["cfg_scale", "CFG Scale"]],
                                                "lora_cfg": [["cfg_scale", "CFG Scale"]],
                                                "hires_base_cfg": hires, "hires_lora_cfg": hires}
    assert [field.name for field in FIELDS if field.hires_of] == ["hires_gamma", "hires_base_cfg", "hires_lora_cfg"]


def test_the_accordion_has_the_main_values_up_front_and_every_other_field_once_under_more():
    names = {section: [[field.name for field in row] for row in rows] for section, rows in accordion.sections().items()}
    assert names["main"] == [["gamma"], ["base_cfg", "lora_cfg"], ["start", "end"]]
    assert names["more"] == [["base_text_encoder"], ["hires"], ["hires_gamma", "hires_base_cfg", "hires_lora_cfg"],
                             ["memory", "batched"]]
    placed = [name for rows in names.values() for row in rows for name in row]
    assert placed == [field.name for field in fields_but_enabled()]


def test_the_hints_are_one_line_and_the_settings_keep_the_long_explanations():
    assert all(len(field.hint) <= 100 for field in FIELDS), [field.name for field in FIELDS if len(field.hint) > 100]
    memory = next(field for field in FIELDS if field.name == "memory")
    assert "low-rank" in memory.details


def test_the_page_reads_the_follow_table_where_the_notice_element_carries_it():
    script = JAVASCRIPT.read_text()
    assert "[data-follows]" in script and "dataset.follows" in script
    assert "cfg_scale" not in script, "the page's script keeps no follow table of its own"
