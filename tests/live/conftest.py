"""Live tier: run against a real WebUI. Set AUTOLORA_WEBUI_URL (e.g. http://127.0.0.1:7860) to a
WebUI started with --api that has the project's fixtures (tests/make_fixtures.py); set
AUTOLORA_PLAIN_WEBUI_URL to the same WebUI started without the extension
(--disable-extra-extensions) for the "disabled = no extension" check."""
import os

import pytest

from tests.live.webui import WebUI

URL = os.environ.get("AUTOLORA_WEBUI_URL")
PLAIN_URL = os.environ.get("AUTOLORA_PLAIN_WEBUI_URL")
LORAS = ("autolora_test_lora", "autolora_test_loha", "autolora_test_unet_only")


def pytest_collection_modifyitems(config, items):
    if URL:
        return
    skip = pytest.mark.skip(reason="live tests need a running WebUI: set AUTOLORA_WEBUI_URL (see tests/README.md)")
    for item in items:
        if "tests/live" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def _checkpoint(webui):
    titles = [m["title"] for m in webui.call("/sdapi/v1/sd-models")]
    wanted = os.environ.get("AUTOLORA_CHECKPOINT", "autolora-")
    matches = [t for t in titles if t.startswith(wanted)]
    if not matches:
        pytest.fail(f"the WebUI at {webui.url} has no checkpoint named {wanted}*: run "
                    f"`python tests/make_fixtures.py DIR` and start the WebUI with --ckpt-dir DIR --lora-dir DIR/Lora "
                    f"(see tests/README.md); it has: {titles}")
    return matches[0]


def _check_loras(webui):
    names = {lora["name"] for lora in webui.call("/sdapi/v1/loras")}
    missing = [name for name in LORAS if name not in names]
    if missing:
        pytest.fail(f"the WebUI at {webui.url} lacks the LoRA fixtures {missing}: put the files from "
                    f"`python tests/make_fixtures.py DIR` (DIR/Lora) in its --lora-dir and refresh; it has {sorted(names)}")


@pytest.fixture(scope="session")
def webui():
    client = WebUI(URL)
    _check_loras(client)
    checkpoint = _checkpoint(client)
    client.call("/sdapi/v1/options", {"sd_model_checkpoint": checkpoint, "live_previews_enable": False})
    return client


@pytest.fixture(scope="session")
def plain_webui():
    if not PLAIN_URL:
        pytest.skip("set AUTOLORA_PLAIN_WEBUI_URL to the same WebUI without the extension for this check")
    client = WebUI(PLAIN_URL)
    client.call("/sdapi/v1/options", {"sd_model_checkpoint": _checkpoint(client), "live_previews_enable": False})
    return client
