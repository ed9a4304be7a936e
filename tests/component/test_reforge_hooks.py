"""Tier 2: the reForge family adapter's host-free parts: the base model's evaluation through either
generation of the host's samplers module, the CFG scale the host used (from reForge's post-CFG
arguments or recorded by a conditioning modifier for Forge Classic), the combination on reForge's
argument layout, and host detection."""
import copy
import importlib.util
import types

import pytest
import torch

import lib_autolora.hosts.patcher.hooks as patcher_hooks
from lib_autolora import hosts
from lib_autolora.core import guidance
from lib_autolora.core.guidance import Passes
from lib_autolora.core.params import AutoLoraParams
from lib_autolora.core.recorder import Recorder
from lib_autolora.core.report import RunReport
from lib_autolora.core.step import Step
from lib_autolora.hosts.reforge import sampling


def samplers_2025(calls):
    """ComfyUI's samplers module of late 2024 on (reForge): one batch for [cond, uncond]."""
    def calc_cond_batch(model, conds, x, sigma, options):
        calls.append(("calc_cond_batch", conds))
        return [x + 1, x + 2]
    return types.SimpleNamespace(calc_cond_batch=calc_cond_batch, calc_cond_uncond_batch=None)


def samplers_2024(calls):
    """The early-2024 module (Forge Classic)."""
    def calc_cond_uncond_batch(model, cond, uncond, x, sigma, options):
        calls.append(("calc_cond_uncond_batch", [cond, uncond]))
        return x + 1, x + 2
    return types.SimpleNamespace(calc_cond_uncond_batch=calc_cond_uncond_batch)


def predict(samplers, options, cond_scale=7.0):
    return sampling.predictions(samplers, "model", ["cond"], ["uncond"], torch.zeros(1), torch.ones(1), options,
                                cond_scale)


def test_early_2024_hosts_evaluate_with_calc_cond_uncond_batch():
    calls = []
    options = {"sampler_pre_cfg_function": [lambda *a: pytest.fail("Classic runs these on the inputs, before")]}
    assert predict(samplers_2024(calls), options) == (torch.ones(1), torch.full((1,), 2.0))
    assert calls == [("calc_cond_uncond_batch", [["cond"], ["uncond"]])]


def test_recent_hosts_evaluate_with_calc_cond_batch_then_their_pre_cfg_functions_in_order():
    calls = []

    def pre_cfg(add):
        def fn(args):
            calls.append(("pre", args["cond_scale"], args["conds"]))
            return [out + add for out in args["conds_out"]]
        return fn

    options = {"sampler_pre_cfg_function": [pre_cfg(10), pre_cfg(100)]}
    cond, uncond = predict(samplers_2025(calls), options, cond_scale=5.0)
    assert (cond.item(), uncond.item()) == (111.0, 112.0)
    conds = [["cond"], ["uncond"]]
    assert calls == [("calc_cond_batch", conds), ("pre", 5.0, conds), ("pre", 5.0, conds)]


def test_an_extensions_calc_cond_batch_function_replaces_the_hosts():
    calls = []
    options = {"sampler_calc_cond_batch_function": lambda args: calls.append(args["conds"]) or [args["input"] - 1] * 2}
    cond, uncond = predict(samplers_2025(calls), options)
    assert calls == [[["cond"], ["uncond"]]] and cond.item() == uncond.item() == -1.0


def test_the_scale_recorder_keeps_the_scale_and_changes_nothing():
    recorded = []
    generation = types.SimpleNamespace(record_host_scale=recorded.append)
    record = sampling.scale_recorder(generation)
    values = ("model", "x", "t", "uncond", "cond", 1.0, {"o": 1}, 5)
    assert record(*values) == values and recorded == [1.0]
    assert copy.deepcopy([record])[0] is record  # cloning a patcher keeps it as it is


class Generation:
    """What patcher_hooks reads of an adapter's generation."""

    def __init__(self, passes, params, host_scale, base):
        self.step = Step(0, passes, params, None, host_scale)
        self.report = RunReport(params)
        self.switch = None
        self.base, self.seen = base, []

    def evaluate_base(self, args, with_uncond):
        self.seen.append(with_uncond)
        return self.base


def reforge_args(cond_scale, skipped=False, seed=0):
    """reForge's post-CFG arguments: the scale it used, and uncond None where it ran no uncond pass."""
    torch.manual_seed(seed)
    uncond, cond = torch.randn(2, 1, 4, 8, 8)
    if skipped:
        uncond = torch.zeros_like(cond)
    return {"denoised": uncond + (cond - uncond) * cond_scale, "uncond_denoised": uncond, "cond_denoised": cond,
            "cond": [{"strength": 1.0, "model_conds": {}}], "uncond": None if skipped else [{"model_conds": {}}],
            "cond_scale": cond_scale, "model_options": {}, "input": torch.zeros(1, 4, 8, 8),
            "sigma": torch.tensor([1.0]), "model": None}


def post_cfg_of(generation):
    options = {}
    patcher_hooks.install(options, generation, Recorder())
    return options["sampler_post_cfg_function"][0]


def test_the_scale_in_the_hosts_arguments_wins_over_the_recorded_one():
    args = reforge_args(7.0)
    base = reforge_args(7.0, seed=1)
    recorded = 3.0  # a stale or wrong recording must not count where the host says
    generation = Generation(Passes.BOTH, AutoLoraParams(True, 1.5), recorded, (base["cond_denoised"],
                                                                                base["uncond_denoised"]))
    got = post_cfg_of(generation)(args)
    assert torch.allclose(got, guidance.autolora(base["denoised"], args["denoised"], 1.5), atol=1e-6)
    assert generation.seen == [True]


def test_a_call_reforge_ran_without_uncond_guides_both_models_with_the_cond_alone():
    """reForge hands uncond None where it skips CFG (skip early CFG, NGMS), even where AutoLoRA asked it
    to keep the uncond pass at CFG 1: explicit w1/w2 cannot apply there."""
    args = reforge_args(1.0, skipped=True)
    args["model_options"]["disable_cfg1_optimization"] = True
    base_cond = reforge_args(1.0, seed=2)["cond_denoised"]
    generation = Generation(Passes.BOTH, AutoLoraParams(True, 2.0, 5.0, 9.0), None,
                            (base_cond, torch.zeros_like(base_cond)))
    got = post_cfg_of(generation)(args)
    assert generation.seen == [False]
    assert torch.allclose(got, base_cond + 2.0 * (args["cond_denoised"] - base_cond), atol=1e-6)
    lora_only = Generation(Passes.LORA, AutoLoraParams(True, 1.0, lora_cfg=9.0), None, None)
    assert post_cfg_of(lora_only)(args) is args["denoised"]


def finds(monkeypatch, *present):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: types.SimpleNamespace() if name in present else real(name, *a))


def test_the_reforge_family_is_detected_from_what_imports(monkeypatch):
    finds(monkeypatch, "ldm_patched.modules.model_patcher")
    assert hosts.family() == "reforge"
    finds(monkeypatch, "ldm_patched.modules.model_patcher", "backend.patcher")
    assert hosts.family() == "forge"
