"""Live: an exception injected while a sampling pass is set up, inside the base pass and inside the
LoRA pass (lib_autolora/webui/testing.py). A failed setup leaves plain LoRA generation; a failed pass
fails the request with the error; either way the console says so and the next generations equal the
fresh-start ones, with nothing of AutoLoRA left behind."""
import pytest

from tests.live.hardening.conftest import OFF, asking, assert_fresh, last_line, record, state
from tests.live.test_invariants import FORGE_HIRES_FIELDS, autolora, init_image
from tests.live.webui import ApiError

HIRES = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.6,
         "hr_second_pass_steps": 3, **FORGE_HIRES_FIELDS}
IMG2IMG = {"init_images": [init_image()], "denoising_strength": 0.7}
CASES = {  # name: (fault, AutoLoRA settings besides gamma 1.5 / w1 5, request changes, txt2img or img2img)
    "setup": ("setup", {}, {}, "txt2img"),
    "setup, img2img": ("setup", {}, IMG2IMG, "img2img"),
    "base pass, first step": ("base@0", {}, {}, "txt2img"),
    "base pass, step 5": ("base@5", {}, {}, "txt2img"),
    "base pass, batch of 2 with hires fix": ("base@3", {}, {"batch_size": 2, **HIRES}, "txt2img"),
    "base pass, img2img": ("base@2", {}, IMG2IMG, "img2img"),
    "base-only call (gamma 0)": ("base@2", {"gamma": 0.0}, {}, "txt2img"),
    "LoRA pass, first step": ("lora@0", {}, {}, "txt2img"),
    "LoRA pass, step 5": ("lora@5", {}, {}, "txt2img"),
    "LoRA-only call before the range": ("lora@1", {"start": 0.5}, {}, "txt2img"),
}
FAULTS = {}


def generate(webui, kind, payload):
    return webui.txt2img(payload) if kind == "txt2img" else webui.img2img(payload)


@pytest.mark.parametrize("case", CASES)
def test_a_fault_is_said_undone_and_leaves_the_next_generations_fresh(armed, fresh, case):
    fault, settings, changes, kind = CASES[case]
    payload = {**OFF, **changes, "alwayson_scripts": autolora(**{"gamma": 1.5, "base_cfg": 5.0, **settings})}
    point, _, step = fault.partition("@")
    if point == "setup":  # the WebUI logs a script hook's error and samples on: plain LoRA generation
        faulted = generate(armed, kind, asking(payload, fault))
        assert faulted.png == generate(armed, kind, {**OFF, **changes}).png
        said = last_line(armed, "AutoLoRA: setting up failed (InjectedFault")
    else:
        with pytest.raises(ApiError) as error:
            generate(armed, kind, asking(payload, fault))
        where = {"base": "the base pass", "lora": "the LoRA pass"}[point]
        assert f"test fault injected in {where} at step {step}" in error.value.body
        said = last_line(armed, f"AutoLoRA: {where} at step {step} failed (InjectedFault")
    assert said and "AutoLoRA undid its changes" in said, state(armed)["console"][-3:]
    FAULTS[case] = said
    assert_fresh(armed, fresh)
    record("faults", injected=len(FAULTS), by_point=state(armed)["counts"])
