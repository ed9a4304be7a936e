"""Live UI: the AutoLoRA accordion in txt2img, driven in headless Chromium (Debian's chromium,
Playwright for Python; no browser download)."""
import os
import shutil

import pytest

from lib_autolora.core.params import FIELDS_BY_NAME
from lib_autolora.webui import accordion
from tests.live.conftest import LORAS, URL

CHROMIUM = os.environ.get("AUTOLORA_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("AUTOLORA_SCREENSHOTS")  # a folder for the accordion's pictures, if set
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


pytestmark = pytest.mark.usefixtures("webui")  # the SD1 checkpoint, loaded


@pytest.fixture(scope="module")
def page(host):
    host.use("sd1")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the UI test needs `pip install playwright`")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"the UI test needs Chromium at {CHROMIUM} (apt-get install chromium) or AUTOLORA_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(URL, timeout=120_000)
        page.wait_for_selector("#txt2img_generate", timeout=120_000)
        yield page
        browser.close()


def set_number(page, elem_id, value):
    field = page.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def test_accordion_generates_and_writes_infotext(page):
    accordion = page.locator("#autolora_txt2img_enabled")
    accordion.scroll_into_view_if_needed()
    accordion.locator(".label-wrap").first.click()  # opening the accordion enables AutoLoRA
    assert accordion.locator(".input-accordion-checkbox").first.is_checked()
    set_number(page, "autolora_txt2img_gamma", 2.25)
    page.locator("#txt2img_prompt textarea").fill(f"a photo of a cat <lora:{LORAS[0]}:1>")
    for elem_id, value in (("txt2img_steps", 6), ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(page, elem_id, value)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img").filter(has_text="AutoLoRA").last
    info.wait_for(timeout=300_000)
    text = info.inner_text()
    assert "AutoLoRA: True" in text
    assert "AutoLoRA gamma: 2.25" in text


def test_every_control_shows_its_hint(page):
    accordion = page.locator("#autolora_txt2img_enabled")
    for name in ("gamma", "base_cfg", "lora_cfg", "start", "end", "base_text_encoder", "hires"):
        field = FIELDS_BY_NAME[name]
        assert accordion.get_by_text(field.hint, exact=False).count() >= 1, f"no hint for {field.label}"


def value_of(page, elem_id):
    return float(page.locator(f"#{elem_id} input[type=number]").first.input_value())


def paste_infotext(page, text):
    page.locator("#txt2img_neg_prompt textarea").fill("")  # Forge Classic enables Paste only without one
    page.locator("#txt2img_prompt textarea").fill(text)
    page.locator("#tab_txt2img #paste").first.click()  # ersatzForge: no #txt2img_tools around it
    page.wait_for_timeout(1500)


def test_pasted_infotext_restores_every_control_and_text_without_keys_disables(page):
    paste_infotext(page, "a photo of a cat <lora:autolora_test_lora:1>\nNegative prompt: dark\n"
                         "Steps: 6, Sampler: Euler a, CFG scale: 7.0, Seed: 5, Size: 64x64, AutoLoRA: True, "
                         "AutoLoRA gamma: 3.5, AutoLoRA w1: 4.0, AutoLoRA w2: 6.5, AutoLoRA start: 0.1, "
                         "AutoLoRA end: 0.8, AutoLoRA base TE: False, AutoLoRA hires: own, AutoLoRA hires gamma: 2.5")
    enabled = page.locator("#autolora_txt2img_enabled .input-accordion-checkbox").first
    assert enabled.is_checked()
    assert [value_of(page, f"autolora_txt2img_{n}") for n in ("gamma", "base_cfg", "lora_cfg", "start", "end")] == \
        [3.5, 4.0, 6.5, 0.1, 0.8]
    assert not page.locator("#autolora_txt2img_base_text_encoder input[type=checkbox]").first.is_checked()
    assert page.locator("#autolora_txt2img_hires input[value=own]").first.is_checked()
    assert value_of(page, "autolora_txt2img_hires_gamma") == 2.5

    paste_infotext(page, "a photo of a dog\nSteps: 6, Sampler: Euler a, CFG scale: 7.0, Seed: 5, Size: 64x64")
    assert not enabled.is_checked()
    assert value_of(page, "autolora_txt2img_gamma") == 1.5
    assert page.locator("#autolora_txt2img_base_text_encoder input[type=checkbox]").first.is_checked()
    assert page.locator("#autolora_txt2img_hires input[value=same]").first.is_checked()


def visible(page, name):
    return page.locator(f"#autolora_txt2img_{name}").first.is_visible()


def test_the_main_values_are_up_front_and_the_rest_under_more(page):
    """Gamma, w1, w2, start and end show when the accordion opens; the rest only once More is opened."""
    panel = page.locator("#autolora_txt2img_enabled")
    panel.scroll_into_view_if_needed()
    if not panel.locator(".label-wrap.open").count():
        panel.locator(".label-wrap").first.click()
    page.wait_for_timeout(500)
    main, more = ([f.name for row in rows for f in row] for rows in accordion.sections().values())
    assert main == ["gamma", "base_cfg", "lora_cfg", "start", "end"]
    assert all(visible(page, name) for name in main), main
    assert not any(visible(page, name) for name in more), more
    if SCREENSHOTS:
        panel.screenshot(path=os.path.join(SCREENSHOTS, "accordion.png"))
    page.locator("#autolora_txt2img_more .label-wrap").first.click()
    page.wait_for_timeout(500)
    assert all(visible(page, name) for name in more), more
    if SCREENSHOTS:
        panel.screenshot(path=os.path.join(SCREENSHOTS, "accordion-more.png"))
    page.locator("#autolora_txt2img_more .label-wrap").first.click()  # closed again for the other tests
