"""Tier 1: the parameters type against the README's API rules (tests/support/api_oracle.py) on
malformed input drawn by hypothesis: every input is either accepted with the settings the README
promises or rejected with an AutoLoraParamError naming one of the wrong keys, in a message of
bounded length; nothing else is raised."""
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_autolora.core.params import AutoLoraParamError, AutoLoraParams
from tests.support import junk
from tests.support.api_oracle import expect_args, expect_infotext

MAX_MESSAGE = 600  # the longest allowed-keys list plus a shortened value
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def names_a_key(message, keys):
    """Whether a rejection names one of `keys` the way the README shows it."""
    return any(message.startswith(f"AutoLoRA: {key} ") or message.startswith(f"AutoLoRA: unknown key {repr(key)[:40]}")
               or (key == "values" and "at most" in message) for key in keys)


def same_settings(params, expected):
    for key, value in expected.items():
        actual = getattr(params, key)
        if isinstance(value, float) and not (isinstance(actual, float) and math.isclose(actual, value)):
            return False
        if not isinstance(value, float) and actual != value:
            return False
    return True


def check(answer, call):
    try:
        params = call()
    except AutoLoraParamError as error:
        message = str(error)
        assert not answer.accepted, f"rejected what the README accepts: {message}"
        assert names_a_key(message, answer.bad_keys), f"{message!r} names none of {sorted(answer.bad_keys)}"
        assert len(message) < MAX_MESSAGE
        return
    assert answer.accepted, f"accepted what the README rejects (keys {sorted(answer.bad_keys)}): {params}"
    assert params.enabled == answer.enabled
    assert same_settings(params, answer.settings), f"{params} != {answer.settings}"


@FUZZ
@given(st.one_of(junk.args, junk.not_a_list.filter(lambda drawn: isinstance(drawn[1], (list, tuple, str, dict)))))
def test_arguments_are_accepted_or_rejected_as_the_readme_says(drawn):
    _, args = drawn
    args = list(args) if not isinstance(args, dict) else [args]  # a dict alone is one object of named values
    check(expect_args(args), lambda: AutoLoraParams.from_args(args))


@FUZZ
@given(junk.infotext_entries())
def test_infotext_is_accepted_or_rejected_as_the_readme_says(drawn):
    _, entries = drawn
    check(expect_infotext(entries), lambda: AutoLoraParams.from_infotext(entries))


def test_an_integer_beyond_any_float_is_rejected_naming_the_key():
    try:
        AutoLoraParams.from_args([{"gamma": 10 ** 400}])
    except AutoLoraParamError as error:
        assert str(error).startswith("AutoLoRA: gamma must be a number from 0 to 10, got 1000")
    else:
        raise AssertionError("10**400 was accepted as gamma")


def test_a_long_value_is_shown_cut_short():
    try:
        AutoLoraParams.from_args([{"hires": "x" * 100_000}])
    except AutoLoraParamError as error:
        assert "... (100002 characters)" in str(error) and len(str(error)) < 200
    else:
        raise AssertionError("a 100,000-character hires value was accepted")


def test_a_key_given_as_itself_and_as_its_alias_is_rejected():
    try:
        AutoLoraParams.from_args([{"w1": 5, "base_cfg": 6}])
    except AutoLoraParamError as error:
        assert str(error) == "AutoLoRA: base_cfg is given twice, as 'w1' and 'base_cfg'"
    else:
        raise AssertionError("w1 and base_cfg together were accepted")
