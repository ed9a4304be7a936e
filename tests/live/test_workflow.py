"""Live: X/Y/Z sweeps, named API arguments, settings defaults and the hires. fix override."""
import json
import pathlib
import re

import pytest

from tests.live.conftest import LORAS
from tests.live.test_invariants import BASE, CFG, FORGE_HIRES_FIELDS, autolora, with_lora
from tests.live.webui import ApiError, max_difference

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
HIRES = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.6,
         "hr_second_pass_steps": 4, **FORGE_HIRES_FIELDS}


def xyz_script(webui):
    scripts = webui.call("/sdapi/v1/script-info")
    return next(s for s in scripts if s["name"] == "x/y/z plot" and not s["is_img2img"])


def axis_index(webui, label):
    choices = xyz_script(webui)["args"][0]["choices"]
    assert label in choices, f"X/Y/Z has no axis {label!r}: {choices}"
    return choices.index(label)


def xyz_request(webui, x_label, x_values, y_label, y_values):
    """The script's own defaults (hosts differ in its options after the axes: reForge has more) with
    the X and Y axes set and the single images included in the reply."""
    script_args = xyz_script(webui)["args"]
    args = [arg["value"] for arg in script_args]
    args[:9] = [axis_index(webui, x_label), x_values, [], axis_index(webui, y_label), y_values, [], 0, "", []]
    args[[arg["label"] for arg in script_args].index("Include Sub Images")] = True
    return {"script_name": "x/y/z plot", "script_args": args}


def test_xyz_grid_of_gamma_and_lora_weight_gives_matching_images_and_leaves_nothing(webui):
    payload = {**BASE, "prompt": f"a photo of a cat <lora:{LORAS[0]}:0.4>", "alwayson_scripts": autolora()}
    before = webui.txt2img(with_lora(BASE, LORAS[0]))
    grid = webui.txt2img({**payload, **xyz_request(webui, "[AutoLoRA] Gamma", "1, 1.5, 2.5",
                                                   "Prompt S/R", f"{LORAS[0]}:0.4, {LORAS[0]}:0.8")})
    cells = grid.infotexts[1:]  # the first image is the grid
    assert len(cells) == 6
    seen = set()
    for text in cells:
        gamma = re.search(r"AutoLoRA gamma: ([\d.]+)", text)
        weight = re.search(rf"<lora:{LORAS[0]}:([\d.]+)>", text).group(1)
        seen.add((float(gamma.group(1)) if gamma else 1.5, float(weight)))
    assert seen == {(g, w) for g in (1.0, 1.5, 2.5) for w in (0.4, 0.8)}
    for index, text in enumerate(cells):  # each cell is the single generation with its values
        gamma = re.search(r"AutoLoRA gamma: ([\d.]+)", text)
        weight = re.search(rf"<lora:{LORAS[0]}:([\d.]+)>", text).group(1)
        if (gamma and gamma.group(1)) == "2.5" and weight == "0.8":
            single = webui.txt2img({**BASE, "prompt": f"a photo of a cat <lora:{LORAS[0]}:0.8>",
                                    "alwayson_scripts": autolora(gamma=2.5)})
            assert grid.pixels[index + 1].tolist() == single.pixels[0].tolist()
    assert webui.txt2img(with_lora(BASE, LORAS[0])).png == before.png


def readme_api_example():
    text = README.read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S)
    assert block, "README.md has no ```json example"
    return json.loads(block.group(1))


def test_readme_named_arguments_example_works(webui):
    example = readme_api_example()
    settings = example["alwayson_scripts"]["autolora"]["args"][0]
    assert isinstance(settings, dict)
    request = {**example, **{k: BASE[k] for k in ("width", "height", "steps", "sampler_name")},
               "prompt": f"a photo of a cat <lora:{LORAS[0]}:0.8>"}
    named = webui.txt2img(request)
    positional = webui.txt2img({**request, "alwayson_scripts": autolora(**settings)})
    assert max_difference(named, positional) == 0
    assert "AutoLoRA: True" in named.infotexts[0]


@pytest.mark.parametrize("settings, named", [
    ({"gama": 2.0}, "unknown key 'gama'"),
    ({"gamma": 99}, "gamma must be a number from 0 to 10, got 99"),
    ({"w1": "strong"}, "base_cfg must be a number from 0 to 30"),
    ({"hires": "twice"}, "hires must be one of 'same', 'own', 'off'"),
])
def test_named_arguments_errors_name_the_key_and_the_server_stays_usable(webui, settings, named):
    with pytest.raises(ApiError) as error:
        webui.txt2img({**with_lora(BASE, LORAS[0]), "alwayson_scripts": {"autolora": {"args": [settings]}}})
    assert named in error.value.body
    assert webui.txt2img(with_lora(BASE, LORAS[0])).png == webui.txt2img(with_lora(BASE, LORAS[0])).png


def test_settings_defaults_apply_to_missing_values(webui):
    explicit = webui.txt2img({**with_lora(BASE, LORAS[0]), "alwayson_scripts": autolora(gamma=2.5)})
    webui.call("/sdapi/v1/options", {"autolora_default_gamma": 2.5})
    try:
        from_settings = webui.txt2img({**with_lora(BASE, LORAS[0]), "alwayson_scripts": {"autolora": {"args": [{}]}}})
    finally:
        webui.call("/sdapi/v1/options", {"autolora_default_gamma": 1.5})
    assert max_difference(from_settings, explicit) == 0


def test_hires_override_applies_to_the_second_pass_only(webui):
    payload = {**with_lora(BASE, LORAS[0]), **HIRES}
    plain = webui.txt2img(payload)
    same = webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=2.0)})
    off = webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=2.0, hires="off")})
    own_plain = webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=2.0, hires="own", hires_gamma=1.0,
                                                                        hires_lora_cfg=CFG)})
    # the second pass as plain LoRA generation, whether switched off or given gamma 1
    assert max_difference(own_plain, off) == 0
    # the first pass still had AutoLoRA, and "same" used it on the second pass too
    assert max_difference(off, plain) > 0
    assert max_difference(same, off) > 0
    assert "AutoLoRA hires: off" in off.infotexts[0]
    assert "AutoLoRA hires: own" in own_plain.infotexts[0] and "AutoLoRA hires gamma: 1.0" in own_plain.infotexts[0]
    assert "AutoLoRA hires" not in same.infotexts[0]


DYNTHRES = "dynamicthresholding (cfg-fix) integrated"


def test_composes_with_the_hosts_cfg_function(webui):
    """Forge's built-in dynamic thresholding replaces the CFG formula; AutoLoRA guides both models
    through it, and gamma 1 stays the host's own result."""
    scripts = {s["name"] for s in webui.call("/sdapi/v1/script-info")}
    if DYNTHRES not in scripts:
        pytest.skip("this host has no built-in dynamic thresholding (Forge has)")
    payload = {**with_lora(BASE, LORAS[0]), "cfg_scale": 12}
    dynthres = {DYNTHRES: {"args": [True, 5.0, 1.0]}}
    alone = webui.txt2img({**payload, "alwayson_scripts": dynthres})
    assert max_difference(alone, webui.txt2img(payload)) > 0, "dynamic thresholding must change the image"
    gamma_one = webui.txt2img({**payload, "alwayson_scripts": {**dynthres, **autolora(gamma=1.0, lora_cfg=12.0)}})
    assert max_difference(gamma_one, alone) == 0
    guided = webui.txt2img({**payload, "alwayson_scripts": {**dynthres, **autolora(gamma=1.5)}})
    assert max_difference(guided, alone) > 0
