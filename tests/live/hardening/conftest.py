"""Live hardening checks: faults, interrupts and skips, hostile input, concurrency and a soak, on a
WebUI started with AUTOLORA_TEST_FAULTS=1 (the test hooks of lib_autolora/webui/testing.py); without
them these tests skip.

"Fresh-start" images are taken by the first test that needs them, which must find a WebUI that has
made no generation since it started (the hooks count them): restart the WebUI before a run. With
AUTOLORA_PLAIN_WEBUI_URL set, the fresh "off" image is also checked against the WebUI without the
extension. AUTOLORA_LIVE_REPORT=FILE writes the counts each check records (payloads by class, faults,
generations, memory) as JSON; they are printed at the end of the run too."""
import json
import os

import pytest

from lib_autolora.webui import testing
from tests.live.conftest import LORAS, PLAIN_URL, Host
from tests.live.test_invariants import BASE, autolora, with_lora
from tests.live.webui import ApiError

OFF = with_lora(BASE, LORAS[0])  # AutoLoRA not asked for
ON = {**OFF, "alwayson_scripts": autolora(gamma=1.5, base_cfg=5.0)}
RECORDS = {}


def record(section, **values):
    """Counts for the run's report, by check."""
    RECORDS.setdefault(section, {}).update(values)


def state(webui):
    return webui.call(testing.ROUTE)


def asking(payload, fault="", pace=""):
    """The request with the test hooks' settings."""
    overrides = {**payload.get("override_settings", {}), testing.FAULT: fault, testing.PACE: pace}
    return {**payload, "override_settings": overrides}


@pytest.fixture(scope="session")
def armed(host):
    webui = host.use("sd1")  # the hardening checks run on the SD1 fixture
    try:
        state(webui)
    except ApiError as error:
        pytest.skip(f"the hardening checks need the WebUI started with AUTOLORA_TEST_FAULTS=1 ({error})")
    return webui


@pytest.fixture(scope="session")
def fresh(armed):
    """{"off", "on"}: the fresh-start PNGs of OFF and ON, and the state report before them."""
    before = state(armed)
    begun = before["counts"].get("generations begun", 0)
    if begun:
        pytest.fail(f"the WebUI at {armed.url} made {begun} generations before the fresh-start images could be "
                    "taken: restart it (with AUTOLORA_TEST_FAULTS=1) and run the hardening checks first")
    images = {"off": armed.txt2img(OFF).png, "on": armed.txt2img(ON).png, "state": before}
    if PLAIN_URL:
        plain = Host(PLAIN_URL, check_loras=False).use("sd1")  # its last checkpoint may be another family's
        assert plain.txt2img(OFF).png == images["off"], "AutoLoRA off must equal no extension"
    return images


def assert_fresh(webui, fresh):
    """The next generation with AutoLoRA off, then the next with it on, equal their fresh-start images,
    and nothing of a generation is left: no Generation object, no patched attribute, no held tensor,
    no callback or hook more than at the start."""
    assert webui.txt2img(OFF).png == fresh["off"], "AutoLoRA off differs from the fresh start"
    assert webui.txt2img(ON).png == fresh["on"], "AutoLoRA on differs from the fresh start"
    assert_no_leak(state(webui), fresh["state"])


def assert_no_leak(now, start):
    assert now["generations"] == 0, f"{now['generations']} Generation objects outlive their requests"
    assert now["patched"] == 0 and now["switch_layers"] == 0 and now["switch_bytes"] == 0
    assert now["callbacks"] == start["callbacks"]
    assert now["holders"] == start["holders"], "host objects hold AutoLoRA functions they did not hold at start"


def last_line(webui, starting):
    """AutoLoRA's last console line that starts with `starting`, or None."""
    return next((line for line in reversed(state(webui)["console"]) if line.startswith(starting)), None)


def pytest_terminal_summary(terminalreporter):
    if RECORDS:
        terminalreporter.write_sep("-", "AutoLoRA hardening counts")
        for section, values in RECORDS.items():
            terminalreporter.write_line(f"{section}: {json.dumps(values, sort_keys=True)}")


def pytest_sessionfinish(session):
    if RECORDS and os.environ.get("AUTOLORA_LIVE_REPORT"):
        with open(os.environ["AUTOLORA_LIVE_REPORT"], "w") as report:
            json.dump(RECORDS, report, indent=1, sort_keys=True)
