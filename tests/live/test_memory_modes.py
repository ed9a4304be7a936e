"""Live: the invariants (a)-(e) in each memory mode (auto, lean, fast), the lean path against the fast
one, and batched evaluation, on a real WebUI. The references of a scenario (plain LoRA generation, the
prompt without its tag) are made once and shared by the modes; select with -k (e.g. -k lean)."""
import pytest

from lib_autolora.core.params import MEMORY_MODES, AutoLoraParams
from tests.live.conftest import LORAS
from tests.live.test_invariants import BASE, CFG, SCENARIOS, generate, with_lora
from tests.live.webui import ApiError, max_difference

SETTING = "autolora_default_memory"
REFERENCES = {}  # (scenario, lora) -> (plain LoRA generation, the prompt without the tag)
PIXEL_TOLERANCE = 2  # 8-bit levels between results equal within float tolerance


def autolora(memory, **values):
    return {"autolora": {"args": AutoLoraParams(enabled=True, memory=memory, **values).to_args()}}


def references(webui, scenario, lora):
    if (scenario, lora) not in REFERENCES:
        kind, overrides = SCENARIOS[scenario]
        payload = {**BASE, **overrides}
        plain_lora = generate(webui, kind, with_lora(payload, lora))
        again = generate(webui, kind, with_lora(payload, lora))
        if max_difference(plain_lora, again):  # the host's first run of a setting can differ (seen on A1111)
            plain_lora, again = again, generate(webui, kind, with_lora(payload, lora))
        repeat = max_difference(plain_lora, again)
        REFERENCES[(scenario, lora)] = (None, repeat) if repeat else (plain_lora, generate(webui, kind, payload))
    plain_lora, no_tag = REFERENCES[(scenario, lora)]
    if plain_lora is None:
        pytest.skip(f"the host itself is not deterministic here: the same request differs by {no_tag} between runs")
    return plain_lora, no_tag


@pytest.mark.parametrize("memory", MEMORY_MODES)
@pytest.mark.parametrize("lora", LORAS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_b_c_d_in_each_memory_mode(webui, scenario, lora, memory):
    plain_lora, no_tag = references(webui, scenario, lora)
    kind, overrides = SCENARIOS[scenario]
    payload = with_lora({**BASE, **overrides}, lora)
    gamma_one = generate(webui, kind, {**payload, "alwayson_scripts": autolora(memory, gamma=1.0, lora_cfg=CFG)})
    assert max_difference(gamma_one, plain_lora) == 0
    gamma_zero = generate(webui, kind, {**payload, "alwayson_scripts": autolora(memory, gamma=0.0, base_cfg=CFG)})
    assert max_difference(gamma_zero, no_tag) == 0
    guided = generate(webui, kind, {**payload, "alwayson_scripts": autolora(memory, gamma=1.5, base_cfg=5.0)})
    assert max_difference(guided, plain_lora) > 0 and max_difference(guided, no_tag) > 0
    for text in guided.infotexts:
        assert "AutoLoRA: True" in text and "AutoLoRA w1: 5.0" in text
        assert ("AutoLoRA memory" in text) == (memory != "auto"), "the mode is written only when not auto"


@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_a_disabled_equals_a_webui_without_the_extension_whatever_the_default_mode(webui, plain_webui, memory):
    payload = with_lora(BASE, LORAS[0])
    webui.call("/sdapi/v1/options", {SETTING: memory})
    try:
        options = webui.call("/sdapi/v1/options")
        if SETTING in options:  # Forge answers only the options its API model knew at start, no extension's
            assert options[SETTING] == memory
        without_extension = plain_webui.txt2img(payload)
        assert webui.txt2img(payload).png == without_extension.png
        disabled = webui.txt2img({**payload, "alwayson_scripts": {"autolora": {"args": [{"enabled": False}]}}})
        assert disabled.png == without_extension.png
    finally:
        webui.call("/sdapi/v1/options", {SETTING: "auto"})


@pytest.mark.parametrize("memory", MEMORY_MODES)
@pytest.mark.parametrize("named, message", [({"gamma": -1}, "gamma must be"),
                                            ({"start": 0.9, "end": 0.1}, "start must")])
def test_e_bad_input_is_named_and_leaves_no_trace_in_each_mode(webui, memory, named, message):
    plain_lora, _ = references(webui, "euler_a", LORAS[0])
    with pytest.raises(ApiError) as error:
        webui.txt2img({**with_lora(BASE, LORAS[0]), "alwayson_scripts": {"autolora": {"args": [{**named,
                                                                                                 "memory": memory}]}}})
    assert message in error.value.body
    assert webui.txt2img(with_lora(BASE, LORAS[0])).png == plain_lora.png


def test_e_an_unknown_memory_mode_is_named_with_the_modes(webui):
    with pytest.raises(ApiError) as error:
        webui.txt2img({**with_lora(BASE, LORAS[0]), "alwayson_scripts": {"autolora": {"args": [{"memory": "small"}]}}})
    assert "memory must be one of 'auto', 'lean', 'fast'" in error.value.body


@pytest.mark.parametrize("lora", LORAS)
@pytest.mark.parametrize("scenario", ["euler_a", "batch_2_count_2", "hires_fix", "img2img"])
def test_lean_and_batched_equal_the_fast_path_within_float_tolerance(webui, scenario, lora):
    kind, overrides = SCENARIOS[scenario]
    payload = with_lora({**BASE, **overrides}, lora)
    results = {(memory, batched): generate(webui, kind, {**payload, "alwayson_scripts": autolora(
        memory, gamma=1.5, base_cfg=5.0, batched=batched)}) for memory in ("fast", "lean") for batched in (False, True)}
    fast = results[("fast", False)]
    for key, result in results.items():
        assert max_difference(result, fast) <= PIXEL_TOLERANCE, key
        assert all(("AutoLoRA batched: True" in text) == key[1] for text in result.infotexts)
