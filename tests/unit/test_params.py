"""Tier 1: the parameters type: defaults, validation messages, positional args, infotext."""
import pytest

from lib_autolora.core.params import FIELDS, AutoLoraParamError, AutoLoraParams


def test_defaults_follow_the_paper_and_the_generation():
    p = AutoLoraParams()
    assert (p.enabled, p.gamma, p.base_cfg, p.lora_cfg, p.start, p.end, p.base_text_encoder) == \
        (False, 1.5, None, None, 0.0, 1.0, True)
    assert p.scales(7.0) == (7.0, 7.0) and p.scales(4.5, 2.0) == (4.5, 4.5)


def test_positional_args_in_ui_order_and_zero_cfg_means_follow():
    p = AutoLoraParams.from_args([True, 2.0, 0, 5, 0.25, 0.75, False])
    assert p == AutoLoraParams(enabled=True, gamma=2.0, base_cfg=None, lora_cfg=5.0, start=0.25, end=0.75,
                               base_text_encoder=False)
    assert p.scales(7) == (7, 5.0) and p.scales(7, 2.0) == (7, 10.0)
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
    with pytest.raises(AutoLoraParamError, match=f"at most {len(FIELDS)} values"):
        AutoLoraParams.from_args([True] + [1] * len(FIELDS))


def test_disabled_settings_are_not_checked():
    assert AutoLoraParams.from_args([False, -5, "x", None, 2, 1, "maybe"]) == AutoLoraParams()


def test_named_values_take_defaults_for_missing_keys_and_enable():
    assert AutoLoraParams.from_args([{"gamma": 2}, 1.5, 0, 0]) == AutoLoraParams(enabled=True, gamma=2.0)
    assert AutoLoraParams.from_args([{"w1": 5, "w2": 6.5, "hires": "Off"}]) == \
        AutoLoraParams(enabled=True, base_cfg=5.0, lora_cfg=6.5, hires="off")
    assert AutoLoraParams.from_args([{"enabled": False, "gamma": -1}]) == AutoLoraParams()


@pytest.mark.parametrize("named, message", [
    ({"gama": 2}, r"unknown key 'gama'; allowed keys: enabled, gamma, .*w1, w2"),
    ({"gamma": "high"}, r"gamma must be a number from 0 to 10, got 'high'"),
    ({"base_cfg": 40}, r"base_cfg must be a number from 0 to 30 \(0 or null = use the CFG Scale\), got 40"),
    ({"hires": "double"}, r"hires must be one of 'same', 'own', 'off', got 'double'"),
    ({"start": 0.5, "end": 0.5}, r"start must be less than end"),
])
def test_named_values_errors_name_the_key_and_the_allowed_values(named, message):
    with pytest.raises(AutoLoraParamError, match=message):
        AutoLoraParams.from_args([named])


def test_settings_defaults_replace_built_in_defaults_but_not_given_values():
    defaults = {"gamma": 2.0, "lora_cfg": 6.0}
    assert AutoLoraParams.from_args([True], defaults) == AutoLoraParams(enabled=True, gamma=2.0, lora_cfg=6.0)
    assert AutoLoraParams.from_args([{"gamma": 3}], defaults) == AutoLoraParams(enabled=True, gamma=3.0, lora_cfg=6.0)


def test_hires_pass_settings():
    params = AutoLoraParams(True, 1.5, 5.0, None, hires="own", hires_gamma=2.5, hires_lora_cfg=4.0)
    assert params.for_pass(is_hires=False) is params
    hires = params.for_pass(is_hires=True)
    assert (hires.gamma, hires.base_cfg, hires.lora_cfg) == (2.5, None, 4.0)
    assert AutoLoraParams(True, hires="off").for_pass(is_hires=True) is None
    same = AutoLoraParams(True, 2.0)
    assert same.for_pass(is_hires=True) is same


def test_hires_values_reach_infotext_only_when_used():
    unused = AutoLoraParams(True, hires_gamma=3.0)
    assert unused.to_infotext() == {"AutoLoRA": True}
    used = AutoLoraParams(True, hires="own", hires_gamma=3.0)
    assert used.to_infotext() == {"AutoLoRA": True, "AutoLoRA hires": "own", "AutoLoRA hires gamma": 3.0}
    assert AutoLoraParams.from_infotext({k: str(v) for k, v in used.to_infotext().items()}) == used


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
    AutoLoraParams(True, hires="own", hires_gamma=0.0, hires_base_cfg=9.0, hires_lora_cfg=3.0),
    AutoLoraParams(True, hires="off"),
])
def test_infotext_round_trip_through_text(params):
    as_text = {key: str(value) for key, value in params.to_infotext().items()}  # infotext is text
    assert AutoLoraParams.from_infotext(as_text) == params


def test_infotext_without_autolora_keys_disables_it():
    assert AutoLoraParams.from_infotext({"Steps": "20", "CFG scale": "7"}) == AutoLoraParams()


def test_every_field_has_a_label_an_infotext_key_and_a_hint():
    assert len({f.infotext for f in FIELDS}) == len(FIELDS)
    assert all(f.label and f.hint for f in FIELDS)


def test_overrides_replace_given_values_and_can_enable():
    args = [False, 2.0, 5, 0, 0.1, 0.9]
    assert AutoLoraParams.from_args(args, overrides={"enabled": "True", "gamma": 3.0}) == \
        AutoLoraParams(True, 3.0, 5.0, None, 0.1, 0.9)
    with pytest.raises(AutoLoraParamError, match="gamma must be"):
        AutoLoraParams.from_args([True], overrides={"gamma": 11})


def test_memory_mode_defaults_to_auto_and_takes_the_three_modes():
    assert AutoLoraParams().memory == "auto" and AutoLoraParams().batched is False
    for mode in ("auto", "lean", "fast"):
        assert AutoLoraParams.from_args([{"memory": mode.upper()}]).memory == mode
    with pytest.raises(AutoLoraParamError, match=r"memory must be one of 'auto', 'lean', 'fast', got 'small'"):
        AutoLoraParams.from_args([{"memory": "small"}])
    with pytest.raises(AutoLoraParamError, match=r"batched must be true or false, got 'sometimes'"):
        AutoLoraParams.from_args([{"batched": "sometimes"}])


def test_memory_and_batched_come_last_by_position_and_reach_infotext_only_when_not_default():
    names = [field.name for field in FIELDS]
    assert names[-2:] == ["memory", "batched"], "new fields go last: positional API args keep their places"
    params = AutoLoraParams.from_args([True, 1.5, 0, 0, 0, 1, True, "same", 1.5, 0, 0, "lean", True])
    assert (params.memory, params.batched) == ("lean", True)
    assert AutoLoraParams(True).to_infotext() == {"AutoLoRA": True}
    entries = params.to_infotext()
    assert entries == {"AutoLoRA": True, "AutoLoRA memory": "lean", "AutoLoRA batched": True}
    assert AutoLoraParams.from_infotext({k: str(v) for k, v in entries.items()}) == params


def test_the_type_checkers_view_of_the_parameters_names_every_field_with_its_type():
    """ParamsMethods tells the type checker what params_type makes of FIELDS; this keeps the two the same."""
    import ast
    import inspect

    from lib_autolora.core import params

    source = ast.parse(inspect.getsource(params.ParamsMethods))
    block = next(node for node in ast.walk(source) if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    declared = [(node.target.id, ast.unparse(node.annotation)) for node in block.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and not node.target.id.startswith("__")]
    types = {"bool": "bool", "choice": "str", "number": "float"}
    expected = [(f.name, types[f.kind] + (" | None" if f.default is None else "")) for f in FIELDS]
    assert declared == expected
