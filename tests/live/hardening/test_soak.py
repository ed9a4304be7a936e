"""Live: a soak of 150 generations in one server life, after a warm-up: AutoLoRA on and off in turn,
three LoRA files at two weights, gammas 0 to 2.5, batch sizes 1 and 2, hires fix on and off, txt2img
and img2img, an X/Y/Z grid, and a change to a second checkpoint and back. Resident memory stays within
5 % of its value after the warm-up; callbacks, hooks on host objects, Generation objects and tensors do
not grow; fixed-seed probe images stay the same on each checkpoint.

The second checkpoint is the title (prefix) in AUTOLORA_SECOND_CHECKPOINT, e.g. one made by the fixture
maker with another seed (tests/README.md); without it this test skips."""
import os

import pytest

from tests.live.conftest import LORAS
from tests.live.hardening.conftest import OFF, ON, assert_no_leak, record, state
from tests.live.hardening.test_faults import HIRES, IMG2IMG, generate
from tests.live.test_invariants import autolora, with_lora
from tests.live.test_workflow import xyz_request

SOAKED = 150
SWITCH_AT, BACK_AT = 60, 110  # generations on the second checkpoint: 60-109
PROBE_EVERY = 25
RSS_TOLERANCE = 0.05


def variant(n, grid):
    """(txt2img or img2img, request) of the n-th generation: the settings cycle with different periods;
    `grid`: the X/Y/Z plot script's arguments."""
    lora, weight = LORAS[n % 3], (0.6, 1.0)[n // 3 % 2]
    payload = with_lora({**OFF, "steps": 4, "batch_size": 1 + n // 2 % 2, "seed": 100 + n % 7}, lora, weight)
    if n % 2 == 0:  # every other generation with AutoLoRA
        payload["alwayson_scripts"] = autolora(gamma=(0.0, 1.0, 1.5, 2.5)[n // 2 % 4], base_cfg=(None, 5.0)[n // 4 % 2])
    if n % 12 == 6:
        return "txt2img", {**payload, **grid}
    if n % 3 == 2:
        return "img2img", {**payload, **IMG2IMG}
    return "txt2img", {**payload, **(HIRES if n % 5 == 3 else {})}


def probe(webui):
    return webui.txt2img(OFF).png, webui.txt2img(ON).png


def rss(webui):
    return webui.call("/sdapi/v1/memory")["ram"]["used"]


def use_checkpoint(webui, title):
    webui.call("/sdapi/v1/options", {"sd_model_checkpoint": title})
    loaded = webui.call("/sdapi/v1/options")["sd_model_checkpoint"]
    assert loaded.split(" [")[0] == title.split(" [")[0], f"asked for {title}, the WebUI runs {loaded}"


@pytest.fixture(scope="module")
def checkpoints(armed):
    wanted = os.environ.get("AUTOLORA_SECOND_CHECKPOINT")
    if not wanted:
        pytest.skip("set AUTOLORA_SECOND_CHECKPOINT to a second checkpoint's title for the soak (tests/README.md)")
    titles = [m["title"] for m in armed.call("/sdapi/v1/sd-models")]
    second = next((t for t in titles if t.startswith(wanted)), None)
    assert second, f"the WebUI has no checkpoint {wanted}*: {titles}"
    return armed.call("/sdapi/v1/options")["sd_model_checkpoint"], second


def run(webui, start, stop, counted):
    grid = xyz_request(webui, "[AutoLoRA] Gamma", "1, 2", "Seed", "1, 2")
    for n in range(start, stop):
        kind, payload = variant(n, grid)
        generate(webui, kind, payload)
        counted.append(n)


def test_soak(armed, fresh, checkpoints):
    primary, second = checkpoints
    warm, soaked = [], []
    run(armed, 0, 12, warm)  # warm-up: every variant on both checkpoints
    use_checkpoint(armed, second)
    run(armed, 0, 12, warm)
    second_probe = probe(armed)
    use_checkpoint(armed, primary)
    run(armed, 0, 12, warm)
    first_probe = probe(armed)
    assert first_probe == (fresh["off"], fresh["on"]), "after the warm-up the probes differ from the fresh start"
    start, rss_start = state(armed), rss(armed)
    probes = 0
    for n in range(SOAKED):
        if n == SWITCH_AT:
            use_checkpoint(armed, second)
        if n == BACK_AT:
            use_checkpoint(armed, primary)
        run(armed, n, n + 1, soaked)
        if n % PROBE_EVERY == PROBE_EVERY - 1:
            probes += 1
            assert probe(armed) == (second_probe if SWITCH_AT <= n < BACK_AT else first_probe), f"after {n + 1}"
    assert probe(armed) == first_probe
    end, rss_end = state(armed), rss(armed)
    record("soak", generations=len(soaked), warm_up=len(warm), probes=probes + 1, checkpoints=[primary, second],
           rss_after_warm_up=rss_start, rss_end=rss_end, rss_change=round(rss_end / rss_start - 1, 4),
           state_after_warm_up={k: start[k] for k in ("callbacks", "holders", "generations", "tensors")},
           state_end={k: end[k] for k in ("callbacks", "holders", "generations", "tensors")},
           generations_begun=end["counts"].get("generations begun"))
    assert len(soaked) == SOAKED
    assert abs(rss_end / rss_start - 1) <= RSS_TOLERANCE, f"resident memory {rss_start} -> {rss_end}"
    assert_no_leak(end, start)
    assert end["tensors"]["count"] <= start["tensors"]["count"], (start["tensors"], end["tensors"])
