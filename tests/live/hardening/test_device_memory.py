"""Live: what AutoLoRA holds on the model's device, from its console line and the test hooks' state. `auto`
takes the lean path where the WebUI runs a low-VRAM mode (A1111's --medvram, --medvram-sdxl on SDXL,
--lowvram; the patcher families' --always-low-vram/--always-no-vram) and the copies, free on a CPU,
elsewhere; nothing is held once sampling has ended, for txt2img, hires fix and a batch count of 2."""
import pytest

from tests.live.hardening.conftest import ON, assert_no_leak, last_line, state
from tests.live.test_invariants import SCENARIOS, generate

LOW_VRAM_FLAGS = ("--medvram", "--lowvram", "--always-low-vram", "--always-no-vram")  # SD1 fixture: no --medvram-sdxl


def low_vram(webui):
    """Whether the WebUI was started in a low-VRAM mode, from its command line (Forge's /sdapi/v1/cmd-flags
    fails its own response validation)."""
    return any(flag in LOW_VRAM_FLAGS for flag in state(webui)["argv"])


@pytest.mark.parametrize("scenario", ["euler_a", "hires_fix", "batch_2_count_2"])
def test_auto_takes_lean_in_low_vram_modes_and_nothing_is_held_after_sampling(armed, fresh, scenario):
    kind, overrides = SCENARIOS[scenario]
    generate(armed, kind, {**ON, **overrides})
    line = last_line(armed, "AutoLoRA: gamma")
    assert line is not None, state(armed)["console"][-3:]
    expected = "lean path" if low_vram(armed) else "fast path"
    assert expected in line and line.endswith("while sampling, none after."), line
    assert_no_leak(state(armed), fresh["state"])
