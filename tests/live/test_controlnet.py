"""Live: AutoLoRA with one and with two ControlNet units (Mikubill's sd-webui-controlnet on A1111, the built-in
ControlNet on Forge), using the random-weight ControlNet of tests/support/controlnet_fixture.py.
Start the WebUI with that file's fixtures (tests/README.md, "ControlNet"); without a ControlNet
extension or the fixture these tests skip."""
import collections
import json

import numpy as np
import pytest

from tests.live.conftest import PLAIN_URL, URL
from tests.live.webui import ApiError, WebUI, max_difference, png_base64
from tests.support import controlnet_fixture
from tests.support.fixtures import names

CFG = 7.0
LORA = names.LORAS["sd1"][0]
CHECKPOINTS = (controlnet_fixture.A1111_CKPT_NAME, names.FORGE_SD1)
PAYLOAD = dict(prompt="a photo of a cat", negative_prompt="blurry, dark", seed=1234, steps=4, cfg_scale=CFG,
               width=64, height=64, sampler_name="Euler a")
HIRES = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=3,
             hr_cfg=CFG, hr_additional_modules=["Use same choices"])  # the last two: Forge's; A1111 ignores them
MODES = ("Balanced", "ControlNet is more important")  # the second guides only the cond rows: it needs the marks
Host = collections.namedtuple("Host", "webui model no_preprocessor")
IMAGES = {}  # (WebUI, request) -> result: checks share requests, and a generation takes minutes on A1111


def _connect(url, purpose):
    """The WebUI with its ControlNet checkpoint loaded, the fixture's ControlNet model and the name of
    "no preprocessor" there (A1111's extension: "none", Forge: "None")."""
    webui = WebUI(url)
    try:
        models = webui.call("/controlnet/model_list")["model_list"]
        modules = webui.call("/controlnet/module_list")["module_list"]
    except ApiError as error:
        pytest.skip(f"the WebUI at {url} ({purpose}) has no ControlNet API: {error}")
    model = next((m for m in models if m.startswith(controlnet_fixture.CONTROLNET_NAME)), None)
    titles = [m["title"] for m in webui.call("/sdapi/v1/sd-models")]
    title = next((t for t in titles if t.startswith(CHECKPOINTS)), None)
    if model is None or title is None:
        pytest.skip(f"the WebUI at {url} ({purpose}) lacks the ControlNet fixtures (has {models} and {titles}): "
                    f"run tests/support/controlnet_fixture.py (see tests/README.md)")
    webui.call("/sdapi/v1/options", {"sd_model_checkpoint": title, "live_previews_enable": False})
    return Host(webui, model, next(m for m in modules if m.lower() == "none"))


@pytest.fixture(scope="module")
def host():
    return _connect(URL, "with the extension")


@pytest.fixture(scope="module")
def plain_host():
    if not PLAIN_URL:
        pytest.skip("set AUTOLORA_PLAIN_WEBUI_URL to the same WebUI without the extension for this check")
    return _connect(PLAIN_URL, "without the extension")


def control_image(bright_half):
    """Grey with a bright left or top half (Forge's ControlNet ignores an all-black image)."""
    pixels = np.full((64, 64, 3), 40, dtype=np.uint8)
    if bright_half == "left":
        pixels[:, :32] = 255
    else:
        pixels[:32] = 255
    return png_base64(pixels)


TWO_UNITS = ("left", "top")
UNIT_WEIGHTS = (1.0, 0.6)  # the second unit weaker, so that the two units are not interchangeable


def generate(host, control="left", mode="Balanced", lora_weight=1, autolora=None, **overrides):
    """One txt2img image, made once per WebUI and request; control: a control image's bright half, a
    tuple of them for one unit each, or None for no ControlNet unit; autolora: AutoLoRA's args (named
    values or a list)."""
    prompt = PAYLOAD["prompt"] if lora_weight is None else f"{PAYLOAD['prompt']} <lora:{LORA}:{lora_weight}>"
    scripts = {}
    if control is not None:
        halves = (control,) if isinstance(control, str) else control
        scripts["controlnet"] = {"args": [
            {"enabled": True, "module": host.no_preprocessor, "model": host.model, "image": control_image(half),
             "weight": weight, "control_mode": mode, "save_detected_map": False}
            for half, weight in zip(halves, UNIT_WEIGHTS)]}
    if autolora is not None:
        scripts["autolora"] = {"args": autolora if isinstance(autolora, list) else [autolora]}
    payload = {**PAYLOAD, **overrides, "prompt": prompt, "alwayson_scripts": scripts}
    key = (host.webui.url, json.dumps(payload, sort_keys=True))
    if key not in IMAGES:
        IMAGES[key] = host.webui.txt2img(payload)
    return IMAGES[key]


def test_the_control_changes_the_image(host):
    """The fixture's premise: without it every check below would pass with a ControlNet that does nothing."""
    with_control = generate(host)
    assert max_difference(with_control, generate(host, control=None)) > 0
    assert max_difference(with_control, generate(host, control="top")) > 0


def test_autolora_and_controlnet_generate_together(host):
    guided = generate(host, autolora={"gamma": 1.5})
    assert "AutoLoRA: True" in guided.infotexts[0] and "ControlNet 0" in guided.infotexts[0]
    assert max_difference(guided, generate(host)) > 0


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5])
def test_each_pass_gets_the_control(host, gamma):
    """gamma 0 runs the base model alone, gamma 1 the LoRA model alone, 1.5 both."""
    left = generate(host, autolora={"gamma": gamma})
    assert max_difference(left, generate(host, control="top", autolora={"gamma": gamma})) > 0


@pytest.mark.parametrize("mode", MODES)
def test_gamma_one_equals_controlnet_with_plain_lora(host, mode):
    assert max_difference(generate(host, mode=mode, autolora={"gamma": 1.0}), generate(host, mode=mode)) == 0


@pytest.mark.parametrize("mode", MODES)
def test_gamma_zero_equals_controlnet_without_the_lora(host, mode):
    base = generate(host, mode=mode, autolora={"gamma": 0.0})  # w1 follows the CFG scale
    assert max_difference(base, generate(host, mode=mode, lora_weight=None)) == 0


@pytest.mark.parametrize("hires", [False, True], ids=["txt2img", "hires_fix"])
@pytest.mark.parametrize("mode", MODES)
def test_base_pass_gets_the_control_the_lora_pass_gets(host, mode, hires):
    """With the LoRA at weight 0 both models are the same, so AutoLoRA's base and LoRA predictions
    are equal, and any gamma gives the plain image, exactly, only if the base pass that AutoLoRA
    adds sees the same control (and, on A1111, the same cond/uncond marks) as the host's pass."""
    overrides = HIRES if hires else {}
    guided = generate(host, mode=mode, lora_weight=0, autolora={"gamma": 1.5}, **overrides)
    assert "AutoLoRA: True" in guided.infotexts[0]
    assert max_difference(guided, generate(host, mode=mode, lora_weight=0, **overrides)) == 0


def test_autolora_off_equals_the_webui_without_the_extension(host, plain_host):
    without_extension = generate(plain_host)
    assert generate(host).png == without_extension.png
    assert generate(host, autolora=[False, 3.0, 4, 5]).png == without_extension.png


def test_with_two_units_each_unit_changes_the_image(host):
    """Two units' premise: the second unit counts, in the plain generation and in AutoLoRA's."""
    assert max_difference(generate(host, control=TWO_UNITS), generate(host)) > 0
    guided = generate(host, control=TWO_UNITS, autolora={"gamma": 1.5})
    assert "ControlNet 1" in guided.infotexts[0]
    assert max_difference(guided, generate(host, autolora={"gamma": 1.5})) > 0


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_with_two_units_gamma_zero_and_one_equal_the_plain_images(host, gamma):
    """gamma 1 (w2 following the CFG Scale): ControlNet's plain LoRA image; gamma 0 (w1 following it):
    its image without the LoRA tag. Both units reach the pass AutoLoRA adds."""
    reference = generate(host, control=TWO_UNITS, lora_weight=1 if gamma else None)
    assert max_difference(generate(host, control=TWO_UNITS, autolora={"gamma": gamma}), reference) == 0


def test_with_two_units_the_base_pass_gets_both_controls(host):
    """As the single-unit check: the LoRA at weight 0, so any gamma gives the plain image only if the base
    pass sees both units as the host's pass does."""
    guided = generate(host, control=TWO_UNITS, lora_weight=0, autolora={"gamma": 1.5})
    assert max_difference(guided, generate(host, control=TWO_UNITS, lora_weight=0)) == 0


def test_with_two_units_autolora_off_equals_the_webui_without_the_extension(host, plain_host):
    without_extension = generate(plain_host, control=TWO_UNITS)
    assert generate(host, control=TWO_UNITS).png == without_extension.png
    assert generate(host, control=TWO_UNITS, autolora=[False, 3.0, 4, 5]).png == without_extension.png
