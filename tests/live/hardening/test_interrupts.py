"""Live: Interrupt and Skip sent over the API while a generation samples, at several points of a step
range (before, inside and after AutoLoRA's range), slowed by the test hooks' pace so that a step can be
hit. The interrupted request returns its partial image, the console says where sampling stopped, and
the next generations equal the fresh-start ones."""
import threading
import time

import pytest

from tests.live.hardening.conftest import OFF, asking, assert_fresh, last_line, record
from tests.live.test_invariants import autolora

PACE = "0.6"  # seconds per denoiser call: the polls below must see each step
STEPS = 8
PAYLOAD = {**OFF, "steps": STEPS, "alwayson_scripts": autolora(gamma=2.0, start=0.25, end=0.75)}
SIGNALS = []


def sampling_step(webui):
    """The step the WebUI's job is sampling, or -1 while no job runs (the last one's count stays)."""
    job = webui.call("/sdapi/v1/progress?skip_current_image=true")["state"]
    return job["sampling_step"] if job["job"] else -1


def signalled(webui, payload, endpoint, at_step):
    """Runs the request in a thread and posts `endpoint` once sampling reaches `at_step`; the result."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(done=webui.txt2img(asking(payload, pace=PACE))))
    thread.start()
    deadline = time.monotonic() + 120
    while sampling_step(webui) < at_step and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread.is_alive(), f"the generation ended before step {at_step}: pace too short for this host?"
    webui.call(endpoint, {})
    thread.join(300)
    assert not thread.is_alive(), f"the request hung after {endpoint}"
    SIGNALS.append((endpoint, at_step))
    return result["done"]


@pytest.mark.parametrize("endpoint", ["/sdapi/v1/interrupt", "/sdapi/v1/skip"])
@pytest.mark.parametrize("at_step", [1, 3, 6])  # before the range (steps 2-5), inside it, after it
def test_a_signal_mid_sampling_stops_cleanly(armed, fresh, endpoint, at_step):
    stopped = signalled(armed, PAYLOAD, endpoint, at_step)
    assert len(stopped.png) == 1
    flag = endpoint.rsplit("/", 1)[1] + ("ped" if endpoint.endswith("skip") else "ed")
    said = last_line(armed, "AutoLoRA: gamma 2")
    assert said and f"Sampling was {flag} after denoiser step" in said, said
    step = int(said.rsplit("step ", 1)[1].rstrip("."))
    # the WebUI checks the flags when a denoiser call starts: the call under way when the signal came ends
    assert at_step <= step <= min(at_step + 2, STEPS - 1), said
    assert_fresh(armed, fresh)
    record("interrupts and skips", sent=len(SIGNALS))


def test_a_skipped_batch_leaves_the_next_batch_as_it_would_be(armed, fresh):
    payload = {**PAYLOAD, "n_iter": 2}
    whole = armed.txt2img(payload)
    skipped = signalled(armed, payload, "/sdapi/v1/skip", 3)
    assert len(skipped.png) == 2
    assert skipped.png[1] == whole.png[1], "the batch after the skipped one must be generated as usual"
    assert_fresh(armed, fresh)
    record("interrupts and skips", sent=len(SIGNALS))
