"""Live: AutoLoRA with other post-CFG functions on the patcher-based hosts: built-in Self-Attention
Guidance (Forge, reForge) runs a second UNet pass after AutoLoRA's; CFG++ samplers (Forge Neo) bring
a post-CFG function of their own."""
import pytest

from tests.live.conftest import LORAS
from tests.live.test_invariants import BASE, autolora, with_lora
from tests.live.webui import max_difference

SAG = "selfattentionguidance integrated"  # the script's name starts so on Forge and reForge


def test_composes_with_a_post_cfg_extension(webui):
    names = [s["name"] for s in webui.call("/sdapi/v1/script-info") if not s["is_img2img"]]
    name = next((n for n in names if n.startswith(SAG)), None)
    if name is None:
        pytest.skip("this host has no built-in Self-Attention Guidance (Forge and reForge have)")
    payload = with_lora(BASE, LORAS[0])
    sag = {name: {"args": [True, 1.0]}}  # enabled, scale; the rest as the script's defaults
    alone = webui.txt2img({**payload, "alwayson_scripts": sag})
    assert max_difference(alone, webui.txt2img(payload)) > 0, "SAG must change the image"
    gamma_one = webui.txt2img({**payload, "alwayson_scripts": {**sag, **autolora(gamma=1.0)}})
    assert max_difference(gamma_one, alone) == 0
    guided = webui.txt2img({**payload, "alwayson_scripts": {**sag, **autolora(gamma=1.5)}})
    without_sag = webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=1.5)})
    assert max_difference(guided, alone) > 0
    assert max_difference(guided, without_sag) > 0


def test_guides_with_a_sampler_that_brings_its_own_post_cfg_function(webui):
    """Forge Neo's CFG++ samplers merge their own post-CFG list over the patcher's per call; AutoLoRA
    must still guide (gamma 1.5 differs from plain LoRA) and gamma 1 and 0 keep their invariants."""
    samplers = [s["name"] for s in webui.call("/sdapi/v1/samplers")]
    sampler = next((name for name in samplers if name.startswith("Euler") and "CFG++" in name), None)
    if sampler is None:
        pytest.skip(f"this host has no Euler CFG++ sampler (Forge Neo has); it has {samplers}")
    payload = {**with_lora(BASE, LORAS[0]), "sampler_name": sampler, "cfg_scale": 2.0}
    plain_lora = webui.txt2img(payload)
    no_tag = webui.txt2img({**payload, "prompt": BASE["prompt"]})
    assert max_difference(webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=1.0)}), plain_lora) == 0
    gamma_zero = webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=0.0, base_cfg=2.0)})
    assert max_difference(gamma_zero, no_tag) == 0
    guided = webui.txt2img({**payload, "alwayson_scripts": autolora(gamma=1.5)})
    assert max_difference(guided, plain_lora) > 0 and max_difference(guided, no_tag) > 0
