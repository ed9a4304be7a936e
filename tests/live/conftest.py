"""Live tier: run against a real WebUI. Set AUTOLORA_WEBUI_URL (e.g. http://127.0.0.1:7860) to a
WebUI started with --api that has the project's fixtures (tests/support/make_fixtures.py); set
AUTOLORA_PLAIN_WEBUI_URL to the same WebUI started without the extension
(--disable-extra-extensions) for the "disabled = no extension" check.

Each test runs on the checkpoint of its model family (a `family` parameter; SD1 where it has none):
SD1's fixtures must be there, the other families' tests skip when the WebUI lacks their fixture.
Tests run grouped by family, so the WebUI loads each checkpoint once."""
import os

import pytest

from tests.live.webui import WebUI
from tests.support.fixtures import names

URL = os.environ.get("AUTOLORA_WEBUI_URL")
PLAIN_URL = os.environ.get("AUTOLORA_PLAIN_WEBUI_URL")
LORAS = names.LORAS["sd1"]
MAKE = "python tests/support/make_fixtures.py DIR [--host forge]"


def _family(item):
    return getattr(item, "callspec", None) and item.callspec.params.get("family") or "sd1"


@pytest.hookimpl(trylast=True)  # after pytest's own reordering
def pytest_collection_modifyitems(config, items):
    if not URL:
        skip = pytest.mark.skip(reason="live tests need a running WebUI: set AUTOLORA_WEBUI_URL (see tests/README.md)")
        for item in items:
            if "tests/live" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(skip)
        return
    items.sort(key=lambda item: names.FAMILIES.index(_family(item)))  # stable: each family's tests keep their order


class Host:
    """A WebUI and its fixture checkpoints; `use(family)` loads that family's checkpoint if needed."""

    def __init__(self, url, check_loras=True):
        self.client = WebUI(url)
        self.titles = [m["title"] for m in self.client.call("/sdapi/v1/sd-models")]
        # Forge started with --disable-extra-extensions has no /sdapi/v1/loras
        self.loras = {lora["name"] for lora in self.client.call("/sdapi/v1/loras")} if check_loras else None
        self.loaded = None

    def checkpoint(self, family):
        # by the name and its extension: autolora-flux-1d1s is also the start of autolora-flux-1d1s-fp8
        return next((t for t in self.titles if t.startswith(tuple(f"{n}." for n in names.CHECKPOINTS[family]))), None)

    def use(self, family):
        title = self.checkpoint(family)
        if title is None:
            message = (f"the WebUI at {self.client.url} has no {family} fixture checkpoint "
                       f"({' or '.join(names.CHECKPOINTS[family])}): run `{MAKE}` and start the WebUI with --ckpt-dir "
                       f"DIR/Stable-diffusion --lora-dir DIR/Lora (see tests/README.md); it has {self.titles}")
            if family == "sd1":
                pytest.fail(message)
            pytest.skip(message)
        missing = [name for name in names.LORAS[family] if self.loras is not None and name not in self.loras]
        if missing:
            pytest.fail(f"the WebUI at {self.client.url} has the {family} checkpoint but lacks its LoRA fixtures "
                        f"{missing}: put DIR/Lora from `{MAKE}` in its --lora-dir; it has {sorted(self.loras)}")
        if self.loaded != title:
            self.client.call("/sdapi/v1/options", {"sd_model_checkpoint": title, "live_previews_enable": False})
            self.loaded = title
        return self.client


@pytest.fixture
def family():
    """The model family a test runs on; tests parametrize it."""
    return "sd1"


@pytest.fixture(scope="session")
def host():
    return Host(URL)


@pytest.fixture(scope="session")
def plain_host():
    if not PLAIN_URL:
        pytest.skip("set AUTOLORA_PLAIN_WEBUI_URL to the same WebUI without the extension for this check")
    return Host(PLAIN_URL, check_loras=False)


@pytest.fixture
def webui(host, family):
    return host.use(family)


@pytest.fixture
def plain_webui(plain_host, family):
    return plain_host.use(family)
