"""Live: AutoLoRA next to the extensions LoRA users stack, installed in both instances (tests/README.md,
"Extensions"): LoRA Block Weight, Regional Prompter, ADetailer and Dynamic Prompts, on the SD1 fixture.

For each case: AutoLoRA off equals the WebUI without AutoLoRA (the other extension on in both); gamma 1
(w2 following the CFG Scale) equals that WebUI's image; gamma 0 (w1 following it) equals its image without
the LoRA tag; gamma 1.5 differs and writes its infotext; lean and fast agree within 2 levels of 8 bits;
the next plain request is as before. The references come from the instance without AutoLoRA, which must
first repeat its own image and give the same plain LoRA image as the instance with AutoLoRA: where not, the
case skips with the measured difference. A case skips where either instance lacks the extension."""
import pytest

from lib_autolora.webui import testing
from tests.live.conftest import LORAS
from tests.live.test_invariants import BASE, CFG, autolora
from tests.live.webui import ApiError, max_difference

LORA = LORAS[0]
LEAN_FAST_LEVELS = 2
# LoRA Block Weight's 26 values (BASE, IN00-IN11, M00, OUT00-OUT11) for SD1: the SD1 fixtures of A1111 and Forge
# put their LoRA layers in different blocks, so some of each kind of block is off and one is at half weight
BLOCKS = "1,1,0,1,1,0,1,1,0,1,1,0,1,0.5,1,1,0,1,1,0,1,1,0,1,1,0"
REGIONAL = {  # Regional Prompter's arguments by position (its ui() order), two vertical regions
    "active": True, "debug": False, "tab": "Matrix", "matrix": "Vertical", "mask": "Mask", "prompt": "Prompt",
    "ratios": "1,1", "base_ratios": "0", "base": False, "common": False, "negative_common": False,
    "calc": "Attention", "options": [], "lora_te_stop": "0", "lora_unet_stop": "0", "threshold": "0",
    "polymask": None, "lora_stop": "0", "lora_stop_hr": "0", "flip": False}
DETECTOR = "face_yolov8n.pt"  # the kit's offline detection model (tests/support/adetailer_model.py)
AD_SCRIPTS = "dynamic_prompting,dynamic_thresholding,lora_block_weight,negpip,wildcard_recursive,wildcards"


def regional(calc):
    return {"regional prompter": {"args": list({**REGIONAL, "calc": calc}.values())}}


def adetailer(prompt=""):
    return {"adetailer": {"args": [True, False, {"ad_model": DETECTOR, "ad_prompt": prompt}]}}


def tagged(prompt, lora=f"<lora:{LORA}:1>"):
    return f"{prompt} {lora}".strip()


# name: (script title, the request with the LoRA, the request without it)
RP_PROMPT = "a photo of a cat {} BREAK a red house"
AD_INSIDE = {"ad_script_names": AD_SCRIPTS + ",autolora"}
CASES = {
    "lbw_blocks": ("lora block weight", {"prompt": tagged(BASE["prompt"], f"<lora:{LORA}:1:lbw={BLOCKS}>")}, {}),
    "lbw_stop_step": ("lora block weight", {"prompt": tagged(BASE["prompt"], f"<lora:{LORA}:1:stop=4>")}, {}),
    "lbw_te_unet": ("lora block weight", {"prompt": tagged(BASE["prompt"], f"<lora:{LORA}:te=0.4:unet=1.3>")}, {}),
    "rp_attention": ("regional prompter",
                     {"prompt": RP_PROMPT.format(f"<lora:{LORA}:1>"), "alwayson_scripts": regional("Attention")},
                     {"prompt": RP_PROMPT.format(""), "alwayson_scripts": regional("Attention")}),
    "rp_latent": ("regional prompter",
                  {"prompt": RP_PROMPT.format(f"<lora:{LORA}:1>"), "alwayson_scripts": regional("Latent")},
                  {"prompt": RP_PROMPT.format(""), "alwayson_scripts": regional("Latent")}),
    "dynamic_prompts": ("dynamic prompts", {"prompt": f"a photo of a {{cat <lora:{LORA}:1>|dog <lora:{LORA}:0.7>}}"},
                        {"prompt": "a photo of a {cat|dog}"}),
    # ADetailer last: on Forge and reForge each ADetailer request shifts the host's later images by a level,
    # with or without AutoLoRA, and the cases after it would skip
    # AutoLoRA not in ADetailer's script list (its default): the inpaint passes are plain LoRA generation,
    # so gamma 0's reference is the prompt without the tag, with ADetailer's own prompt keeping it
    "adetailer_outside": ("adetailer", {"prompt": tagged(BASE["prompt"]), "n_iter": 3, "alwayson_scripts": adetailer()},
                          {"n_iter": 3, "alwayson_scripts": adetailer(tagged(BASE["prompt"]))}),
    "adetailer_inside": ("adetailer", {"prompt": tagged(BASE["prompt"]), "n_iter": 3, "alwayson_scripts": adetailer(),
                                       "override_settings": AD_INSIDE},
                         {"n_iter": 3, "alwayson_scripts": adetailer(), "override_settings": AD_INSIDE}),
}


def has_script(webui, title):
    return any(name.startswith(title) for name in webui.call("/sdapi/v1/scripts")["txt2img"])


def merged(payload, extra):
    """`payload` with `extra`'s alwayson scripts and override settings added to its own."""
    scripts = {**payload.get("alwayson_scripts", {}), **extra.get("alwayson_scripts", {})}
    settings = {**payload.get("override_settings", {}), **extra.get("override_settings", {})}
    return {**payload, **extra, "alwayson_scripts": scripts, "override_settings": settings}


def repeated(webui, payload):
    """The image of `payload`, after checking the WebUI gives it twice; skips with the difference if not."""
    first, second = webui.txt2img(payload), webui.txt2img(payload)
    difference = max_difference(first, second)
    if difference:
        pytest.skip(f"the WebUI without AutoLoRA does not repeat itself here: two identical requests differ by "
                    f"{difference} levels")
    return first


def same_state(webui, plain):
    """Skips where the two WebUIs no longer give the same plain LoRA image: on Forge an ADetailer or Regional
    Prompter request shifts the images of later ones (by 1 level after one ADetailer request, with or
    without AutoLoRA), so two instances with different request histories drift apart."""
    payload = {**BASE, "prompt": tagged(BASE["prompt"])}
    difference = max_difference(webui.txt2img(payload), plain.txt2img(payload))
    if difference:
        pytest.skip(f"the two WebUIs' request histories made them differ by {difference} levels on a plain LoRA "
                    "image before this case: restart both for an exact comparison")


@pytest.fixture
def case(request, webui, plain_host):
    title, with_tag, without_tag = CASES[request.param]
    plain = plain_host.use("sd1")
    for instance in (webui, plain):
        if not has_script(instance, title):
            pytest.skip(f"the WebUI at {instance.url} has no {title!r} script: install it in both instances "
                        "(tests/README.md, Extensions)")
    return merged(BASE, with_tag), merged(BASE, without_tag), plain


def said(webui):
    """How many console lines AutoLoRA has printed since the WebUI started."""
    return webui.call(testing.ROUTE)["console_said"]


def guided(payload, **values):
    return merged(payload, {"alwayson_scripts": autolora(**values)})


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_autolora_next_to_the_extension_keeps_the_invariants(webui, case):
    with_tag, without_tag, plain = case
    same_state(webui, plain)
    reference = repeated(plain, with_tag)
    assert webui.txt2img(with_tag).png == reference.png, "AutoLoRA off must equal the WebUI without it"
    no_lora = repeated(plain, without_tag)
    assert max_difference(reference, no_lora) > 0, "the LoRA must change the image"

    assert max_difference(webui.txt2img(guided(with_tag, gamma=1.0, lora_cfg=CFG)), reference) == 0
    assert max_difference(webui.txt2img(guided(with_tag, gamma=0.0, base_cfg=CFG)), no_lora) == 0
    lean = webui.txt2img(guided(with_tag, gamma=1.5, base_cfg=5.0, memory="lean"))
    fast = webui.txt2img(guided(with_tag, gamma=1.5, base_cfg=5.0, memory="fast"))
    assert max_difference(lean, reference) > 0 and max_difference(lean, no_lora) > 0
    assert all("AutoLoRA: True" in text and "AutoLoRA w1: 5.0" in text for text in lean.infotexts)
    assert max_difference(lean, fast) <= LEAN_FAST_LEVELS
    assert webui.txt2img(with_tag).png == reference.png, "the next generation without AutoLoRA changed"


@pytest.mark.parametrize("case, inside", [("adetailer_outside", False), ("adetailer_inside", True)], indirect=["case"])
def test_with_adetailer_the_console_line_comes_once_per_guided_pass(webui, case, inside):
    """ADetailer runs every script's postprocess on a copy of `p` and process on another: AutoLoRA reports
    the generation once, from its own `p`, and once per inpaint pass that it guides (in the script list)."""
    try:
        before = said(webui)
    except ApiError as error:  # the test hooks are there only with AUTOLORA_TEST_FAULTS=1
        pytest.skip(f"counting console lines needs the WebUI started with AUTOLORA_TEST_FAULTS=1 ({error})")
    with_tag, _, _ = case
    webui.txt2img(guided(with_tag, gamma=1.5))
    new = said(webui) - before
    lines = [line for line in webui.call(testing.ROUTE)["console"][-new:] if new and line.startswith("AutoLoRA: ")]
    calls = with_tag["n_iter"] * with_tag["steps"]  # one line for the generation: its batches' calls added up
    main = [line for line in lines if f"on {calls} of {calls} denoiser calls" in line]
    assert len(main) == 1, lines
    assert all("path ()" not in line for line in lines), lines
    assert (len(lines) > 1) == inside, lines
