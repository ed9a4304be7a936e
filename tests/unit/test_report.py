"""Tier 1: the console line that says what AutoLoRA did."""
from lib_autolora.core.guidance import Passes
from lib_autolora.core.params import AutoLoraParams
from lib_autolora.core.report import RunReport


def test_active_run_names_settings_steps_passes_and_networks():
    report = RunReport(AutoLoraParams(True, 1.5, 5.0, None))
    report.networks = ["style", "face"]
    for step in range(4):
        report.record(Passes.LORA if step == 0 else Passes.BOTH, step, "steps")
    report.record(Passes.BOTH, 0, "hires pass")
    line = report.summary(switches=4, switch_seconds=0.012, held_bytes=3 * 2**20,
                          path="lean path (low-rank terms on 40 layers, copies of 2)", changed_bytes=60 * 2**20)
    assert line == ("AutoLoRA: gamma 1.5, w1 5, w2 CFG, LoRA and base passes on 4 of 5 denoiser calls "
                    "(steps 1-3, hires pass 0-0), networks style, face; 4 network switches took 12 ms; "
                    "lean path (low-rank terms on 40 layers, copies of 2), at most 3.0 MiB held (5 % of the "
                    "60.0 MiB of LoRA'd layers) while sampling, none after.")


def test_gamma_one_says_no_base_pass_ran():
    report = RunReport(AutoLoraParams(True, 1.0))
    report.record(Passes.LORA, 0, "steps")
    assert "no base pass" in report.summary()


def test_range_that_no_call_falls_in_is_reported():
    report = RunReport(AutoLoraParams(True, 1.5, start=0.9, end=0.95))
    report.record(Passes.LORA, 0, "steps")
    assert "no denoiser call fell in the range 0.9-0.95" in report.summary()


def test_standing_aside_is_said_once_and_replaces_the_summary():
    report = RunReport(AutoLoraParams(True))
    assert report.record_not_applied("no LoRA network is active in the prompt")
    assert not report.record_not_applied("another reason")
    assert report.not_applied == "no LoRA network is active in the prompt"
    assert report.summary() is None


def test_batched_calls_are_counted_in_the_line():
    report = RunReport(AutoLoraParams(True, batched=True))
    report.networks = ["style"]
    for step in range(3):
        report.record(Passes.BOTH, step, "steps")
    report.batched_calls = 2
    assert "on 3 of 3 denoiser calls (steps 0-2), 2 of them as one model call, networks style;" in report.summary()


def test_a_note_is_said_once():
    report = RunReport(AutoLoraParams(True))
    assert report.note("batched evaluation does not apply here")
    assert not report.note("batched evaluation does not apply here")
    assert report.note("another note")
