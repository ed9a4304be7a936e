"""Live: the invariants and checks (a)-(e) on a real WebUI, across samplers, generation modes and
model families."""
import numpy as np
import pytest

from lib_autolora.core.params import AutoLoraParams
from tests.live.conftest import LORAS
from tests.live.webui import ApiError, max_difference, png_base64
from tests.support.fixtures import names

CFG = 7.0
# Forge's hires pass has its own CFG (default 1) and fails over the API without this list; A1111 ignores both
FORGE_HIRES_FIELDS = {"hr_cfg": CFG, "hr_additional_modules": ["Use same choices"]}
BASE = dict(prompt="a photo of a cat", negative_prompt="blurry, dark", seed=1234, steps=8, cfg_scale=CFG,
            width=64, height=64, sampler_name="Euler a", batch_size=1, n_iter=1)
# Forge's "Automatic" schedule ends SD3's flow sigmas in 0, 0 (NaN images); A1111 takes any. Flux-dev runs
# at CFG Scale 1 (no negative pass) with its distilled guidance, Chroma with a real CFG; 4 steps of Euler
# keep their 3072-wide transformer quick on a CPU
FLOW = {"scheduler": "Simple", "sampler_name": "Euler", "steps": 4}
FAMILY_FIELDS = {"sd3": {"scheduler": "Simple"}, "flux": {**FLOW, "cfg_scale": 1.0, "distilled_cfg_scale": 3.5},
                 "chroma": {**FLOW, "cfg_scale": 4.0}}
# a scenario's fields that differ per family: Flux's hires pass at CFG Scale 1 too
SCENARIO_FIELDS = {("flux", "hires_fix"): {"hr_cfg": 1.0, "hr_distilled_cfg": 3.5},
                   ("chroma", "hires_fix"): {"hr_cfg": 4.0}}


def base(family):
    return {**BASE, **FAMILY_FIELDS.get(family, {})}


def autolora(**values):
    return {"autolora": {"args": AutoLoraParams(enabled=True, **values).to_args()}}


def with_lora(payload, lora, weight=1):
    return with_loras(payload, ((lora, weight),))


def with_loras(payload, loras):
    """The payload with a tag per (name, weight) at the end of its prompt."""
    tags = " ".join(f"<lora:{name}:{weight}>" for name, weight in loras)
    return {**payload, "prompt": f"{payload['prompt']} {tags}"}


def init_image():
    rng = np.random.default_rng(0)
    return png_base64(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def inpaint_mask():
    mask = np.zeros((64, 64, 3), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    return png_base64(mask)


SCENARIOS = {
    "euler_a": ("txt2img", {}),
    "dpmpp_2m": ("txt2img", {"sampler_name": "DPM++ 2M"}),
    "heun_second_order": ("txt2img", {"sampler_name": "Heun", "steps": 5}),
    "ddim_eps": ("txt2img", {"sampler_name": "DDIM"}),
    "unipc": ("txt2img", {"sampler_name": "UniPC"}),
    "batch_2_count_2": ("txt2img", {"batch_size": 2, "n_iter": 2}),
    "and_prompt": ("txt2img", {"prompt": "a photo of a cat AND a red house :0.6"}),
    "prompt_editing": ("txt2img", {"prompt": "a photo of a [cat:dog:0.5]"}),
    "empty_negative": ("txt2img", {"negative_prompt": ""}),
    "long_prompt_short_negative": ("txt2img", {"prompt": ", ".join(["a very detailed photo of a cat"] * 14)}),
    "ngms_skipped_uncond": ("txt2img", {"s_min_uncond": 4.0}),
    "real_cfg": ("txt2img", {"cfg_scale": 3.0}),  # Flux-dev with a negative pass, as Forge allows
    "hires_fix": ("txt2img", {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.6,
                              "hr_second_pass_steps": 4, **FORGE_HIRES_FIELDS}),
    "img2img": ("img2img", {"init_images": [init_image()], "denoising_strength": 0.7}),
    "img2img_batch_count_2": ("img2img", {"init_images": [init_image()], "denoising_strength": 0.7, "n_iter": 2}),
    "inpaint": ("img2img", {"init_images": [init_image()], "mask": inpaint_mask(), "denoising_strength": 0.8,
                            "inpainting_fill": 1}),
    "inpaint_only_masked": ("img2img", {"init_images": [init_image()], "mask": inpaint_mask(),
                                        "denoising_strength": 0.8, "inpainting_fill": 1, "inpaint_full_res": True,
                                        "inpaint_full_res_padding": 8}),
}


def two_loras(family):
    """The family's full LoRA and its UNet-only one (Chroma: its PEFT-layout one), at different weights."""
    return (names.LORAS[family][0], 0.6), (names.LORAS[family][2 if len(names.LORAS[family]) > 2 else 1], 1.3)


def case(family, scenario, loras):
    label = "+".join(name if weight == 1 else f"{name}:{weight}" for name, weight in loras)
    return pytest.param(family, scenario, loras, id=f"{family}-{scenario}-{label}")


def sdxl_cases():
    """Where SDXL's conds differ from SD1's (dict conds with a pooled `vector` on A1111, `y` on Forge;
    two text encoders): the main modes with the LoRA on the UNet and both encoders, every LoRA kind
    on txt2img, the second encoder alone on txt2img and hires fix (its own conds), two LoRAs."""
    full, other, unet_only = (((name, 1),) for name in names.LORAS["sdxl"])
    te2 = ((names.SDXL_TE2_ONLY, 1),)
    modes = ("euler_a", "img2img", "inpaint", "hires_fix", "batch_2_count_2", "and_prompt", "prompt_editing")
    return ([case("sdxl", mode, full) for mode in modes]
            + [case("sdxl", "euler_a", loras) for loras in (other, unet_only)]
            + [case("sdxl", mode, te2) for mode in ("euler_a", "hires_fix")]
            + [case("sdxl", "euler_a", two_loras("sdxl"))])


def sd3_cases():
    """SD3's conds are SDXL's dict conds with T5's width; its LoRA changes the MMDiT only."""
    lora = ((names.LORAS["sd3"][0], 1),)
    return [case("sd3", mode, lora) for mode in ("euler_a", "img2img", "and_prompt", "prompt_editing")]


def flux_cases():
    """Flux-dev (Eq. 6 of the paper at CFG Scale 1, and with a real CFG) and Chroma (the full formula): the
    main modes with the LoRA on the transformer (and Flux's CLIP-L), each LoRA layout on txt2img, two LoRAs."""
    modes = ("euler_a", "img2img", "hires_fix", "batch_2_count_2")
    cases = []
    for family in ("flux", "chroma"):
        full = ((names.LORAS[family][0], 1),)
        cases += [case(family, mode, full) for mode in modes + (("real_cfg",) if family == "flux" else ())]
        cases += [case(family, "euler_a", ((lora, 1),)) for lora in names.LORAS[family][1:]]
        cases.append(case(family, "euler_a", two_loras(family)))
    return cases


CASES = ([case("sd1", scenario, ((lora, 1),)) for lora in LORAS for scenario in SCENARIOS if scenario != "real_cfg"]
         + [case("sd1", "euler_a", two_loras("sd1"))] + sdxl_cases() + sd3_cases() + flux_cases())


def generate(webui, kind, payload):
    return webui.txt2img(payload) if kind == "txt2img" else webui.img2img(payload)


@pytest.fixture(scope="session")
def plain_references():
    return {}


@pytest.fixture
def plain_reference(webui, family, plain_references):
    """(a)'s reference: a LoRA generation with the extension present but not asked for."""
    if family not in plain_references:
        plain_references[family] = webui.txt2img(with_lora(base(family), names.LORAS[family][0]))
    return plain_references[family]


@pytest.mark.parametrize("family", names.FAMILIES)
def test_a_disabled_and_absent_args_equal_a_webui_without_the_extension(webui, plain_webui, family):
    payload = with_lora(base(family), names.LORAS[family][0])
    without_extension = plain_webui.txt2img(payload)
    no_args = webui.txt2img(payload)
    disabled_args = [False, 3.0, 4, 5, 0.2, 0.9, False]
    disabled = webui.txt2img({**payload, "alwayson_scripts": {"autolora": {"args": disabled_args}}})
    assert no_args.png == without_extension.png
    assert disabled.png == without_extension.png
    assert "AutoLoRA" not in disabled.infotexts[0]


@pytest.mark.parametrize("family", names.FAMILIES)
def test_a_disabled_equals_absent_args(webui, plain_reference, family):
    lora = names.LORAS[family][0]
    disabled = webui.txt2img({**with_lora(base(family), lora), "alwayson_scripts": {"autolora": {"args": [False]}}})
    assert disabled.png == plain_reference.png


def check_invariants(webui, kind, payload, loras):
    tagged = with_loras(payload, loras)
    plain_lora = generate(webui, kind, tagged)
    again = generate(webui, kind, tagged)
    if max_difference(plain_lora, again):  # the host's first run of a setting can differ (seen on A1111 img2img)
        plain_lora, again = again, generate(webui, kind, tagged)
    repeat = max_difference(plain_lora, again)
    if repeat:
        pytest.skip(f"the host itself is not deterministic here: the same request differs by {repeat} between runs")
    no_tag = generate(webui, kind, payload)
    assert max_difference(plain_lora, no_tag) > 0, f"{loras} must change the image"

    cfg = payload["cfg_scale"]
    # (b) gamma 1, w2 = CFG scale: plain LoRA generation
    gamma_one = generate(webui, kind, {**tagged, "alwayson_scripts": autolora(gamma=1.0, lora_cfg=cfg)})
    assert max_difference(gamma_one, plain_lora) == 0
    # (c) gamma 0, w1 = CFG scale, base text encoder on: the prompt without the LoRA tag
    gamma_zero = generate(webui, kind, {**tagged, "alwayson_scripts": autolora(gamma=0.0, base_cfg=cfg)})
    assert max_difference(gamma_zero, no_tag) == 0
    # (d) gamma 1.5 differs from both and the infotext carries the settings; at CFG Scale 1 (Flux-dev) there
    # is no negative pass for a w1 of its own: base + gamma * (lora - base), with gamma 2 to show in the infotext
    values, shown = ({"gamma": 2.0}, "AutoLoRA gamma: 2.0") if cfg == 1 else ({"gamma": 1.5, "base_cfg": 5.0},
                                                                              "AutoLoRA w1: 5.0")
    guided = generate(webui, kind, {**tagged, "alwayson_scripts": autolora(**values)})
    assert max_difference(guided, plain_lora) > 0
    assert max_difference(guided, no_tag) > 0
    assert all("AutoLoRA: True" in text and shown in text for text in guided.infotexts)


@pytest.mark.parametrize("family, scenario, loras", CASES)
def test_b_c_d_invariants(webui, family, scenario, loras):
    kind, overrides = SCENARIOS[scenario]
    check_invariants(webui, kind, {**base(family), **overrides, **SCENARIO_FIELDS.get((family, scenario), {})}, loras)


@pytest.mark.parametrize("family, lora", [*(("sd1", lora) for lora in LORAS), ("sdxl", names.LORAS["sdxl"][0])])
def test_b_c_d_invariants_with_lora_functional(webui, family, lora):
    """A1111's other LoRA mode: networks add their output in each layer's forward, unmerged."""
    if "lora_functional" not in webui.call("/sdapi/v1/options"):
        pytest.skip("this host has no lora_functional mode (Forge applies LoRA its own way)")
    webui.call("/sdapi/v1/options", {"lora_functional": True})
    try:
        # the host leaves weights merged by earlier generations until a forward with other networks
        # restores them: a generation without networks first, then one with them
        webui.txt2img(BASE)
        webui.txt2img(with_lora(BASE, lora))
        check_invariants(webui, "txt2img", BASE, ((lora, 1),))
    finally:
        webui.call("/sdapi/v1/options", {"lora_functional": False})
        # the host itself: after lora_functional was on, its next merge differs (by 2 levels here) until a
        # generation without networks has restored the weights, with or without this extension
        webui.txt2img(BASE)


@pytest.mark.parametrize("family", names.FAMILIES)
@pytest.mark.parametrize("args, named", [
    ([True, -1.0], "gamma"),
    ([True, 1e6], "gamma"),
    ([True, "strong"], "gamma"),
    ([True, 1.5, 0, 0, 0.9, 0.1], "start must be less than end"),
])
def test_e_bad_input_is_named_and_leaves_no_trace(webui, plain_reference, family, args, named):
    lora = names.LORAS[family][0]
    with pytest.raises(ApiError) as error:
        webui.txt2img({**with_lora(base(family), lora), "alwayson_scripts": {"autolora": {"args": args}}})
    assert named in error.value.body
    assert webui.txt2img(with_lora(base(family), lora)).png == plain_reference.png


def test_infotext_in_an_api_request_sets_the_controls(webui):
    """The API's `infotext` field goes through the same infotext fields as PNG Info."""
    plain = (f"a photo of a cat <lora:{LORAS[0]}:1>\nNegative prompt: blurry, dark\nSteps: 8, Sampler: Euler a, "
             f"CFG scale: 7.0, Seed: 1234, Size: 64x64")
    try:
        webui.txt2img({"infotext": plain})
    except ApiError as error:
        pytest.skip(f"this host's API fails on `infotext` requests without AutoLoRA too: {error}")
    infotext = plain + ", AutoLoRA: True, AutoLoRA gamma: 2.5, AutoLoRA w2: 6.0"
    from_infotext = webui.txt2img({"infotext": infotext})
    from_args = webui.txt2img({**with_lora(BASE, LORAS[0]), "alwayson_scripts": autolora(gamma=2.5, lora_cfg=6.0)})
    assert "AutoLoRA gamma: 2.5" in from_infotext.infotexts[0]
    assert max_difference(from_infotext, from_args) == 0
