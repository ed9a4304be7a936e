"""Live: AutoLoRA with another extension's post-CFG function on the patcher-based hosts (Forge,
reForge): built-in Self-Attention Guidance runs a second UNet pass there, after AutoLoRA's."""
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
