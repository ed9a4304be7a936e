"""Tier 2: failures inside a generation on the fake A1111 (fake_a1111): an error in the base pass, in
the LoRA pass or while setting up leaves nothing of AutoLoRA behind, the console says what happened,
and the next generations equal fresh ones; the test-only hooks (lib_autolora/webui/testing.py) are
inert unless armed, and their state report sees a leaked generation."""
import functools
import types

import pytest
import torch

from lib_autolora.webui import lifecycle, testing
from tests.component.test_a1111_adapter import a1111, assert_same_state, generate, model_state  # noqa: F401

GUIDED = [{"gamma": 1.5}]


def fresh_records(monkeypatch):
    monkeypatch.setattr(testing, "counts", testing.collections.Counter())
    monkeypatch.setattr(testing, "console_lines", testing.collections.deque(maxlen=50))


@pytest.fixture
def armed(monkeypatch, a1111):  # noqa: F811
    """The test hooks armed; `armed(fault)` makes every generation ask for that fault."""
    monkeypatch.setattr(testing, "ARMED", True)
    fresh_records(monkeypatch)

    def ask(fault, pace=""):
        settings = {testing.FAULT: fault, testing.PACE: pace}
        monkeypatch.setattr(a1111.processing.StableDiffusionProcessing, "override_settings", settings, raising=False)
    return ask


@pytest.fixture
def webui_catches(monkeypatch):
    """process_before_every_sampling as the WebUI runs it: an error there is logged, sampling goes on."""
    logged = []

    def run(hook, p):
        try:
            hook(p)
        except Exception as error:  # noqa: BLE001
            logged.append(error)
    monkeypatch.setattr(lifecycle, "prepare_pass", functools.partial(run, lifecycle.prepare_pass))
    return logged


def fresh_references(a1111):  # noqa: F811
    return generate(a1111).samples, generate(a1111, GUIDED).samples, model_state(a1111)


def assert_fresh(a1111, references):  # noqa: F811
    plain, guided, state = references
    assert_same_state(state, a1111)
    assert torch.equal(generate(a1111).samples, plain)
    assert torch.equal(generate(a1111, GUIDED).samples, guided)


@pytest.mark.parametrize("fault, said", [("base@2", "the base pass at step 2 failed"),
                                         ("lora@1", "the LoRA pass at step 1 failed")])
def test_a_fault_in_a_pass_fails_the_generation_and_leaves_nothing(a1111, armed, capsys, fault, said):  # noqa: F811
    references = fresh_references(a1111)
    armed(fault)
    with pytest.raises(testing.InjectedFault):
        generate(a1111, GUIDED)
    out = capsys.readouterr().out
    assert f"AutoLoRA: {said} (InjectedFault: test fault injected in" in out
    assert "AutoLoRA undid its changes" in out
    armed("")
    assert_fresh(a1111, references)


def test_a_fault_in_setup_leaves_plain_lora_generation(a1111, armed, webui_catches, capsys):  # noqa: F811
    references = fresh_references(a1111)
    armed("setup")
    run = generate(a1111, GUIDED, batches=2)
    assert [type(e) for e in webui_catches] == [testing.InjectedFault]  # said once, then AutoLoRA stands aside
    assert torch.equal(run.samples, torch.cat([references[0]] * 2)), "must generate as plain LoRA generation"
    assert "AutoLoRA: setting up failed (InjectedFault" in capsys.readouterr().out
    assert run.p.extra_generation_params == {}, "the images' infotext must not claim AutoLoRA"
    for denoiser in run.denoisers:
        assert "combine_denoised" not in denoiser.__dict__ and "forward" not in denoiser.inner_model.__dict__
    armed("")
    assert_fresh(a1111, references)


def test_an_error_in_the_hosts_lora_pass_is_said_and_undone(a1111, capsys):  # noqa: F811
    references = fresh_references(a1111)
    calls = []

    def fail_in_the_second_lora_evaluation(module, args):
        if a1111.networks.loaded_networks:
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("out of memory")
    hook = a1111.sd_model.model.diffusion_model.register_forward_pre_hook(fail_in_the_second_lora_evaluation)
    with pytest.raises(RuntimeError, match="out of memory"):
        generate(a1111, GUIDED)
    hook.remove()
    assert "AutoLoRA: the LoRA pass at step 1 failed (RuntimeError: out of memory)" in capsys.readouterr().out
    assert_fresh(a1111, references)


def test_unarmed_hooks_ignore_what_a_request_asks(a1111, monkeypatch):  # noqa: F811
    fresh_records(monkeypatch)
    guided = generate(a1111, GUIDED).samples
    monkeypatch.setattr(a1111.processing.StableDiffusionProcessing, "override_settings",
                        {testing.FAULT: "base@0", testing.PACE: "5"}, raising=False)
    assert not testing.ARMED
    assert torch.equal(generate(a1111, GUIDED).samples, guided)
    assert not testing.counts and not testing.console_lines


def test_an_interrupted_generation_says_so(a1111, monkeypatch, capsys):  # noqa: F811
    state = types.SimpleNamespace(interrupted=True, skipped=False)
    monkeypatch.setattr(lifecycle, "finish", functools.partial(lifecycle.finish, state=state))
    generate(a1111, GUIDED)
    assert capsys.readouterr().out.rstrip().endswith("Sampling was interrupted after denoiser step 3.")


def test_the_state_report_sees_a_generation_that_outlives_its_request(a1111, armed):  # noqa: F811
    adapter_class = type(generate(a1111, GUIDED).generation)
    callbacks = {"callbacks_cfg_denoiser": [types.SimpleNamespace(script=f"{testing.ROOT}/scripts/autolora.py"),
                                            types.SimpleNamespace(script="/elsewhere/scripts/other.py")]}
    clean = testing.state(adapter_class, callbacks)
    assert clean["callbacks"] == {"callbacks_cfg_denoiser": 1}
    assert clean["counts"] == {"generations begun": 1}

    def grown(key, kind=None):
        now = testing.state(adapter_class, callbacks)
        return now[key] - clean[key] if kind is None else now[key].get(kind, 0) - clean[key].get(kind, 0)

    armed("lora@2")
    with pytest.raises(testing.InjectedFault) as failed:  # its traceback keeps the generation alive
        generate(a1111, GUIDED)
    assert grown("generations") == 1 and grown("patched") == 0, "a failed generation must undo its patches"
    assert testing.console_lines[-1].startswith("AutoLoRA: the LoRA pass at step 2 failed")
    del failed
    assert grown("generations") == 0

    p = a1111.processing.StableDiffusionProcessing(["a cat"], ["blurry"])
    lifecycle.begin(p, GUIDED, a1111.shared.opts, adapter_class)
    p.denoiser = types.SimpleNamespace(combine_denoised=functools.partial(lifecycle.finish, p))  # a leaked hook
    assert grown("generations") == 1 and grown("holders", "SimpleNamespace") == 1


def test_standing_aside_before_any_step_leaves_no_autolora_infotext(a1111, capsys):  # noqa: F811
    assert generate(a1111, GUIDED).p.extra_generation_params == {"AutoLoRA": True}
    run = generate(a1111, GUIDED, networks=False)
    assert "AutoLoRA: not applied, no LoRA network is active in the prompt" in capsys.readouterr().out
    assert run.p.extra_generation_params == {}
