"""Live UI: the accordion's notices written by javascript/autolora.js, in headless Chromium."""
# ruff: noqa: F811 (the tests take test_ui's `page` fixture, imported here, as their argument)
from tests.live.conftest import LORAS
from tests.live.test_ui import page, set_number  # noqa: F401 (`page` is the module's browser fixture)

NOTICE = "#autolora_txt2img_notice .autolora-notice"


def enable(page, on=True):
    """Ticks or unticks the header's box with the accordion open: the notices are inside it."""
    accordion = page.locator("#autolora_txt2img_enabled")
    accordion.scroll_into_view_if_needed()
    if not accordion.locator(".label-wrap.open").count():
        accordion.locator(".label-wrap").first.click()  # opening it ticks the box
    box = accordion.locator(".input-accordion-checkbox").first
    if box.is_checked() != on:
        box.click()
    page.wait_for_timeout(300)


def type_prompt(page, text):
    page.locator("#txt2img_prompt textarea").fill(text)
    page.wait_for_timeout(300)


def effective(page, name):
    """The text next to an AutoLoRA CFG control, or None where none is shown."""
    line = page.locator(f"#autolora_txt2img_{name} .autolora-effective")
    return line.inner_text() if line.count() and line.is_visible() else None


def test_notice_when_enabled_without_a_lora_tag(page):
    enable(page)
    type_prompt(page, "a photo of a cat")
    assert page.locator(NOTICE).is_visible()
    assert "No <lora:...> tag" in page.locator(NOTICE).inner_text()
    type_prompt(page, f"a photo of a cat <lora:{LORAS[0]}:0.8>")
    assert not page.locator(NOTICE).is_visible()
    type_prompt(page, "a photo of a dog")
    enable(page, False)
    assert not page.locator(NOTICE).is_visible()


def test_a_cfg_left_at_zero_shows_the_scale_it_follows(page):
    enable(page)
    set_number(page, "txt2img_cfg_scale", 7)
    set_number(page, "autolora_txt2img_base_cfg", 0)
    set_number(page, "autolora_txt2img_lora_cfg", 4.5)
    page.wait_for_timeout(300)
    assert effective(page, "base_cfg") == "= CFG Scale 7"
    assert effective(page, "lora_cfg") is None
    set_number(page, "txt2img_cfg_scale", 5)
    page.wait_for_timeout(300)
    assert effective(page, "base_cfg") == "= CFG Scale 5"
    set_number(page, "autolora_txt2img_base_cfg", 3)
    page.wait_for_timeout(300)
    assert effective(page, "base_cfg") is None
