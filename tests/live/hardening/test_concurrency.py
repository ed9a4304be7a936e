"""Live: requests with different AutoLoRA settings sent while another generation runs (the WebUI
queues them and runs one at a time, in an order it chooses): each image equals the same request run
alone, and nothing is left behind afterwards."""
import threading
import time

from tests.live.conftest import LORAS
from tests.live.hardening.conftest import OFF, asking, assert_fresh, record
from tests.live.hardening.test_faults import HIRES, IMG2IMG, generate
from tests.live.hardening.test_interrupts import sampling_step
from tests.live.test_invariants import autolora, with_lora

REQUESTS = {  # name: (txt2img or img2img, request)
    "off": ("txt2img", OFF),
    "gamma 2.5": ("txt2img", {**OFF, "alwayson_scripts": autolora(gamma=2.5)}),
    "gamma 0, w1 4": ("txt2img", {**OFF, "alwayson_scripts": autolora(gamma=0.0, base_cfg=4.0)}),
    "LoHa, range 0.3-0.7, batch 2": ("txt2img", {**with_lora({**OFF, "batch_size": 2}, LORAS[1], 0.7),
                                                 "alwayson_scripts": autolora(gamma=1.8, start=0.3, end=0.7)}),
    "UNet-only, hires own": ("txt2img", {**with_lora({**OFF, **HIRES}, LORAS[2]), "alwayson_scripts": autolora(
        gamma=1.5, hires="own", hires_gamma=2.0)}),
    "img2img, off": ("img2img", {**OFF, **IMG2IMG}),  # the host's own img2img, queued: does it repeat?
    "img2img, w2 9": ("img2img", {**OFF, **IMG2IMG, "alwayson_scripts": autolora(gamma=1.5, lora_cfg=9.0)}),
    "named args, base TE off": ("txt2img", {**OFF, "alwayson_scripts": {"autolora": {"args": [
        {"gamma": 1.2, "w1": 6, "base_text_encoder": False}]}}}),
}
BLOCKER = {**OFF, "steps": 10, "alwayson_scripts": autolora(gamma=2.0, base_cfg=3.0)}


def test_queued_requests_equal_the_same_requests_run_alone(armed, fresh):
    alone = {name: generate(armed, kind, payload).png for name, (kind, payload) in REQUESTS.items()}
    blocker_alone = armed.txt2img(BLOCKER).png
    results, threads = {}, []

    def send(name, kind, payload):
        results[name] = generate(armed, kind, payload).png

    blocker = threading.Thread(target=send, args=("blocker", "txt2img", asking(BLOCKER, pace="0.2")))
    blocker.start()
    while sampling_step(armed) < 1 and blocker.is_alive():
        time.sleep(0.05)
    for name, (kind, payload) in REQUESTS.items():
        threads.append(threading.Thread(target=send, args=(name, kind, payload)))
        threads[-1].start()
    for thread in [blocker] + threads:
        thread.join(600)
    assert sorted(results) == sorted(list(REQUESTS) + ["blocker"]), "a queued request got no answer"
    assert results.pop("blocker") == blocker_alone
    differing = [name for name in REQUESTS if results[name] != alone[name]]
    # where the host's own img2img does not repeat when queued (its noise from a global RNG that the
    # requests before it have moved on), img2img cannot be compared: said in the record
    host_drifts = "img2img, off" in differing
    compared = [name for name in REQUESTS if not (host_drifts and REQUESTS[name][0] == "img2img")]
    differing = [name for name in differing if name in compared]
    assert differing == [], f"these differ from the same request run alone: {differing}"
    record("concurrency", queued=len(REQUESTS), behind="one paced AutoLoRA generation", equal=len(compared),
           not_compared=sorted(set(REQUESTS) - set(compared)))
    assert_fresh(armed, fresh)
