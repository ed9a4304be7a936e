"""Tier 1: the parameters type: defaults, validation messages, positional args, infotext."""
import pytest

from lib_autolora.params import FIELDS, AutoLoraParamError, AutoLoraParams


def test_defaults_follow_the_paper_and_the_generation():
    p = AutoLoraParams()
    assert (p.enabled, p.gamma, p.base_cfg, p.lora_cfg, p.start, p.end, p.base_text_encoder) == \
        (False, 1.5, None, None, 0.0, 1.0, True)
    assert p.base_scale(7.0) == 7.0 and p.lora_scale(4.5) == 4.5


def test_positional_args_in_ui_order_and_zero_cfg_means_follow():
    p = AutoLoraParams.from_args([True, 2.0, 0, 5, 0.25, 0.75, False])
    assert p == AutoLoraParams(enabled=True, gamma=2.0, base_cfg=None, lora_cfg=5.0, start=0.25, end=0.75,
                               base_text_encoder=False)
    assert p.base_scale(7) == 7 and p.lora_scale(7) == 5.0
    assert AutoLoraParams.from_args(p.to_args()) == p
    assert AutoLoraParams.from_args([True]) == AutoLoraParams(enabled=True)


@pytest.mark.parametrize("args, named", [
    ([True, -0.5], "gamma"), ([True, 1e6], "gamma"), ([True, "abc"], "gamma"), ([True, float("nan")], "gamma"),
    ([True, True], "gamma"), ([True, 1.5, 31], "base_cfg"), ([True, 1.5, 0, -2], "lora_cfg"),
    ([True, 1.5, 0, 0, 1.5], "start"), ([True, 1.5, 0, 0, 0, 2], "end"), (["maybe"], "enabled"),
    ([True, 1.5, 0, 0, 0, 1, "yes"], "base_text_encoder"),
])
def test_bad_values_name_the_parameter_and_the_allowed_range(args, named):
    with pytest.raises(AutoLoraParamError, match=rf"AutoLoRA: {named} must be"):
        AutoLoraParams.from_args(args)


def test_start_after_end_is_rejected_with_both_values():
    with pytest.raises(AutoLoraParamError, match=r"start must be less than end .* start=0.8, end=0.2"):
        AutoLoraParams.from_args([True, 1.5, 0, 0, 0.8, 0.2])


def test_too_many_values_are_rejected():
    with pytest.raises(AutoLoraParamError, match="at most 7 values"):
        AutoLoraParams.from_args([True] + [1] * 7)


def test_numbers_as_strings_are_read_as_infotext_gives_them():
    assert AutoLoraParams.from_args(["True", "2.5", "6", "0", "0.1", "0.9", "False"]) == \
        AutoLoraParams(True, 2.5, 6.0, None, 0.1, 0.9, False)


def test_infotext_has_the_flag_and_only_non_defaults():
    assert AutoLoraParams().to_infotext() == {}
    assert AutoLoraParams(enabled=True).to_infotext() == {"AutoLoRA": True}
    entries = AutoLoraParams(True, 2.0, 5.0, None, 0.0, 0.8, False).to_infotext()
    assert entries == {"AutoLoRA": True, "AutoLoRA gamma": 2.0, "AutoLoRA w1": 5.0, "AutoLoRA end": 0.8,
                       "AutoLoRA base TE": False}


@pytest.mark.parametrize("params", [
    AutoLoraParams(enabled=True),
    AutoLoraParams(True, 0.0, 7.0, 7.0, 0.1, 0.5, False),
    AutoLoraParams(True, 3.25, None, 4.0, 0.0, 1.0, True),
])
def test_infotext_round_trip_through_text(params):
    as_text = {key: str(value) for key, value in params.to_infotext().items()}  # infotext is text
    assert AutoLoraParams.from_infotext(as_text) == params


def test_infotext_without_autolora_keys_disables_it():
    assert AutoLoraParams.from_infotext({"Steps": "20", "CFG scale": "7"}) == AutoLoraParams()


def test_every_field_has_a_label_an_infotext_key_and_a_hint():
    assert len({f.infotext for f in FIELDS}) == len(FIELDS)
    assert all(f.label and f.hint for f in FIELDS)
