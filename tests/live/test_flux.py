"""Live: what is Flux's own on the Forge Neo line (the invariants of Flux and Chroma are in
test_invariants.py): at CFG Scale 1 one base model call is added per step and explicit w1/w2 stand aside
with the message; float8 checkpoints (what quantized checkpoints do) with LoRA merged into the float8
weights stand aside with the message, and with LoRA applied on the fly ("Automatic (fp16 LoRA)") keep
the invariants. The console checks need the WebUI started with AUTOLORA_TEST_FAULTS=1."""
import pytest

from lib_autolora.webui import testing
from tests.live.test_invariants import autolora, base, check_invariants, with_lora
from tests.live.webui import ApiError, max_difference
from tests.support.fixtures import names

LORA = names.LORAS["flux"][0]
STORAGE = "forge_unet_storage_dtype"  # the "Diffusion in Low Bits" setting
ON_THE_FLY = "Automatic (fp16 LoRA)"


def console_lines(webui, request):
    """AutoLoRA's console lines printed while `request()` ran."""
    try:
        before = webui.call(testing.ROUTE)["console_said"]
    except ApiError as error:
        pytest.skip(f"reading the console needs the WebUI started with AUTOLORA_TEST_FAULTS=1 ({error})")
    result = request()
    new = webui.call(testing.ROUTE)["console_said"] - before
    return result, webui.call(testing.ROUTE)["console"][-new:] if new else []


@pytest.mark.parametrize("family", ["flux"])
def test_at_cfg_scale_1_each_step_adds_one_base_model_call(webui, family):
    payload = with_lora(base(family), LORA)
    _, lines = console_lines(webui, lambda: webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=2.0)}))
    steps = payload["steps"]  # Euler: one denoiser call a step, and at CFG Scale 1 one model call in it
    assert any(f"LoRA and base passes on {steps} of {steps} denoiser calls" in line
               and f"{steps} network switches" in line for line in lines), lines


@pytest.mark.parametrize("family", ["flux"])
def test_at_cfg_scale_1_explicit_w1_w2_stand_aside_with_the_message(webui, family):
    payload = with_lora(base(family), LORA)
    plain = webui.txt2img(payload)
    guided, lines = console_lines(webui, lambda: webui.txt2img({**payload, "alwayson_scripts": autolora(base_cfg=5.0)}))
    assert guided.png == plain.png
    assert "AutoLoRA" not in guided.infotexts[0]
    assert any("CFG Scale 1" in line and "w1/w2 other than 1" in line for line in lines), lines


@pytest.fixture
def float8(host):
    """The float8 Flux checkpoint, loaded with the storage setting a test asks for; afterwards the bf16 one
    with the setting back at "Automatic" (the setting takes effect when the checkpoint changes)."""
    webui = host.use("flux")
    title = next((t for t in host.titles if t.startswith(f"{names.FLUX_FP8}.")), None)
    if title is None:
        pytest.skip(f"the WebUI at {webui.url} has no {names.FLUX_FP8} fixture (make_fixtures --family flux)")

    def load(storage):
        webui.call("/sdapi/v1/options", {"sd_model_checkpoint": host.checkpoint("flux")})
        webui.call("/sdapi/v1/options", {STORAGE: storage})
        webui.call("/sdapi/v1/options", {"sd_model_checkpoint": title})
        host.loaded = title
        return webui

    yield load
    webui.call("/sdapi/v1/options", {STORAGE: "Automatic"})
    webui.call("/sdapi/v1/options", {"sd_model_checkpoint": host.checkpoint("flux")})
    host.loaded = host.checkpoint("flux")


def test_lora_merged_into_float8_weights_stands_aside_with_the_message(float8):
    webui = float8("Automatic")
    payload = with_lora(base("flux"), LORA)
    plain = webui.txt2img(payload)
    assert max_difference(plain, webui.txt2img(base("flux"))) > 0, "the LoRA must change the image"
    guided, lines = console_lines(webui, lambda: webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=2.0)}))
    assert guided.png == plain.png
    assert any("quantized" in line and "(fp16 LoRA)" in line for line in lines), lines


def test_lora_applied_on_the_fly_to_float8_weights_keeps_the_invariants(float8):
    webui = float8(ON_THE_FLY)
    _, lines = console_lines(webui, lambda: check_invariants(webui, "txt2img", base("flux"), ((LORA, 1),)))
    assert not any("stand" in line or "quantized" in line for line in lines), lines
