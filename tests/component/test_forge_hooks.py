"""Tier 2: the Forge adapter's host-free parts: hook installation, the combination on Forge's
post-CFG argument layout, and host detection."""
import contextlib
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
from lib_autolora.core.step import Step

HOST_SCALE = 7.0


def forge_args(strengths=(1.0,), disable_cfg1=False, seed=0):
    torch.manual_seed(seed)
    uncond, cond = torch.randn(2, 1, 4, 8, 8)
    return {"denoised": uncond + (cond - uncond) * HOST_SCALE, "uncond_denoised": uncond, "cond_denoised": cond,
            "cond": [{"strength": s, "model_conds": {}} for s in strengths], "uncond": [{"model_conds": {}}],
            "model_options": {"disable_cfg1_optimization": disable_cfg1}, "input": torch.zeros(1, 4, 8, 8),
            "sigma": torch.tensor([1.0]), "model": None}


class CountingSwitch:
    def __init__(self, calls):
        self.calls = calls

    @contextlib.contextmanager
    def networks_off(self, exact=False, batch_rows=None):
        self.calls.append("off exact" if exact else f"off rows {batch_rows}")
        yield
        self.calls.append("on")


class FakeGeneration:
    """Stands for an adapter's generation; deep-copying it would copy the model it holds."""

    in_base_pass = False

    def __init__(self, calls):
        self.step = None
        self.switch = CountingSwitch(calls)

    def at(self, passes, batched=False):
        self.step = Step(0, passes, types.SimpleNamespace(batched=batched), None)

    def base_pass(self, exact=False, batch_rows=None):
        return self.switch.networks_off(exact, batch_rows)

    def evaluate_batched(self, run, args):
        self.switch.calls.append("batched")
        with self.base_pass(batch_rows=1):
            return run(args)

    def lora_pass(self):
        return contextlib.nullcontext()

    def __deepcopy__(self, memo):
        raise AssertionError("the generation must not be deep-copied with the patcher's options")


def test_install_puts_ours_first_and_chains_the_wrapper():
    calls = []
    existing_post = lambda args: args["denoised"]  # noqa: E731
    existing_wrapper = lambda apply_model, args: calls.append("theirs") or apply_model(args)  # noqa: E731
    options = {"sampler_post_cfg_function": [existing_post], "model_function_wrapper": existing_wrapper}
    generation = FakeGeneration(calls)

    assert not patcher_hooks.installed(options)
    patcher_hooks.install(options, generation, Recorder())
    assert patcher_hooks.installed(options)
    assert len(options["sampler_post_cfg_function"]) == 2
    assert getattr(options["sampler_post_cfg_function"][0], patcher_hooks.MARK)
    assert options["sampler_post_cfg_function"][0]({"denoised": "raw"}) == "raw"  # no call decided yet
    assert options["sampler_post_cfg_function"][1] is existing_post
    assert options["model_function_wrapper"](lambda args: "out", {}) == "out"
    generation.at(Passes.BASE)  # a base-only call runs the chained wrapper with the networks off, exactly
    assert options["model_function_wrapper"](lambda args: "out", {}) == "out"
    assert calls == ["theirs", "off exact", "theirs", "on"]
    generation.at(Passes.BOTH)  # both passes: the LoRA call as it is, or batched where asked for
    assert options["model_function_wrapper"](lambda args: "out", {}) == "out"
    generation.at(Passes.BOTH, batched=True)
    assert options["model_function_wrapper"](lambda args: "out", {}) == "out"
    assert calls[4:] == ["theirs", "batched", "off rows 1", "theirs", "on"]


def test_a_samplers_own_post_cfg_list_does_not_drop_ours():
    """Forge Neo merges a CFG++ sampler's model options (a post-CFG list of its own) over the patcher's."""
    options = {}
    patcher_hooks.install(options, FakeGeneration([]), Recorder())
    sampler_post = lambda args: args["denoised"]  # noqa: E731
    merged = {**options, "sampler_post_cfg_function": [sampler_post], "disable_cfg1_optimization": True}
    for modifier in merged["conditioning_modifiers"]:
        result = modifier("model", "x", "t", "uncond", "cond", 2.0, merged, 0)
    functions = result[6]["sampler_post_cfg_function"]
    assert functions[1:] == [sampler_post] and patcher_hooks.installed(result[6])
    assert result[6]["disable_cfg1_optimization"] and result[:6] == ("model", "x", "t", "uncond", "cond", 2.0)
    again = options["conditioning_modifiers"][0]("model", "x", "t", "uncond", "cond", 2.0, options, 0)[6]
    assert again is options  # nothing to restore: the patcher's own options pass through


def test_undoing_leaves_the_options_and_a_copy_of_them_as_they_were_before_install():
    """The host may keep the hooked patcher after the generation (Forge keeps the last loaded one), or a
    clone of it: the recorder undoes the options it hooked, `uninstall` the copies the host made."""
    existing_post = lambda args: args["denoised"]  # noqa: E731
    existing_wrapper = lambda apply_model, args: apply_model(args)  # noqa: E731
    existing_modifier = lambda *call: call  # noqa: E731
    for before in ({}, {"sampler_post_cfg_function": [existing_post], "model_function_wrapper": existing_wrapper,
                        "conditioning_modifiers": [existing_modifier]}):
        options, recorder = copy.copy(before), Recorder()
        patcher_hooks.install(options, FakeGeneration([]), recorder)
        patcher_hooks.add_modifier(options, lambda *call: call, recorder)
        assert options != before
        cloned = copy.deepcopy(options)
        recorder.undo()
        assert options == before and not patcher_hooks.installed(options)
        patcher_hooks.uninstall(cloned)
        assert {key: value for key, value in cloned.items() if value != []} == before
        assert not patcher_hooks.installed(cloned)


def test_cloning_a_patcher_does_not_copy_the_generation():
    """Forge's UnetPatcher.clone deep-copies model_options."""
    options = {"transformer_options": {}}
    patcher_hooks.install(options, FakeGeneration([]), Recorder())
    copied = copy.deepcopy(options)
    assert copied["sampler_post_cfg_function"][0] is options["sampler_post_cfg_function"][0]
    assert patcher_hooks.installed(copied)


@pytest.mark.parametrize("passes, w_name", [(Passes.LORA, "lora_cfg"), (Passes.BASE, "base_cfg")])
def test_single_pass_calls_return_the_hosts_result_for_its_scale(passes, w_name):
    args = forge_args()
    for w in (None, HOST_SCALE):
        params = AutoLoraParams(True, 1.0 if passes is Passes.LORA else 0.0, **{w_name: w})
        assert patcher_hooks.combine(args, passes, params, HOST_SCALE, None) is args["denoised"]
    params = AutoLoraParams(True, 1.0, **{w_name: 3.0})
    expected = args["uncond_denoised"] + (args["cond_denoised"] - args["uncond_denoised"]) * 3.0
    assert torch.equal(patcher_hooks.combine(args, passes, params, HOST_SCALE, None), expected)


def test_both_passes_blend_the_guided_predictions_with_gamma():
    args = forge_args(strengths=(0.6, 0.6))  # an AND prompt: Forge multiplies the scale by the weights' sum
    base = forge_args(seed=1)
    seen = []

    def evaluate_base(call_args, with_uncond):
        seen.append(with_uncond)
        return base["cond_denoised"], base["uncond_denoised"]

    params = AutoLoraParams(True, 1.5, base_cfg=5.0, lora_cfg=None)
    got = patcher_hooks.combine(args, Passes.BOTH, params, HOST_SCALE, evaluate_base)
    base_guided = guidance.cfg(base["uncond_denoised"], base["cond_denoised"], 5.0 * 1.2)
    expected = guidance.autolora(base_guided, args["denoised"], 1.5)
    assert torch.allclose(got, expected, atol=1e-6)
    assert seen == [True]


def test_an_extensions_cfg_function_guides_both_models():
    """Forge's dynamic thresholding sets sampler_cfg_function; the base side must go through it too."""
    seen = []

    def halve(cfg_args):  # returns x - denoised, as Forge's CFG functions do
        seen.append(cfg_args["cond_scale"])
        uncond, cond = cfg_args["uncond_denoised"], cfg_args["cond_denoised"]
        denoised = uncond + (cond - uncond) * cfg_args["cond_scale"]
        return cfg_args["input"] - denoised / 2

    args = forge_args()
    args["model_options"]["sampler_cfg_function"] = halve
    base = forge_args(seed=1)
    got = patcher_hooks.combine(args, Passes.BOTH, AutoLoraParams(True, 1.5, base_cfg=5.0, lora_cfg=3.0), HOST_SCALE,
                              lambda call_args, with_uncond: (base["cond_denoised"], base["uncond_denoised"]))
    lora = guidance.cfg(args["uncond_denoised"], args["cond_denoised"], 3.0) / 2
    base_guided = guidance.cfg(base["uncond_denoised"], base["cond_denoised"], 5.0) / 2
    assert torch.allclose(got, guidance.autolora(base_guided, lora, 1.5), atol=1e-5)
    assert seen == [3.0, 5.0]


def test_when_the_host_skipped_the_uncond_pass_everything_uses_the_cond_alone():
    args = forge_args()
    args["uncond_denoised"] = torch.zeros_like(args["cond_denoised"])
    args["denoised"] = args["cond_denoised"].clone()
    base = forge_args(seed=2)["cond_denoised"]
    seen = []

    def evaluate_base(call_args, with_uncond):
        seen.append(with_uncond)
        return base, torch.zeros_like(base)

    got = patcher_hooks.combine(args, Passes.BOTH, AutoLoraParams(True, 2.0, 5.0, 9.0), 1.0, evaluate_base)
    assert seen == [False]
    assert torch.allclose(got, base + 2.0 * (args["cond_denoised"] - base), atol=1e-6)
    # told to keep the uncond pass (CFG 1 with explicit scales), the explicit scales apply
    args_kept = forge_args(disable_cfg1=True)
    assert patcher_hooks.uncond_evaluated(args_kept, 1.0)


def test_inherit_keeps_base_text_and_takes_the_hosts_other_conditions():
    base = [{"cross_attn": "base text", "strength": 0.5, "model_conds": {"c_crossattn": "base"}}]
    host = [{"cross_attn": "lora text", "strength": 0.5, "control": "cn",
             "model_conds": {"c_crossattn": "lora", "c_concat": "image"}}]
    assert patcher_hooks.inherit(base, host) == [{"cross_attn": "base text", "strength": 0.5, "control": "cn",
                                                "model_conds": {"c_crossattn": "base", "c_concat": "image"}}]


def test_host_detection_is_from_what_imports(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: types.SimpleNamespace() if name == "backend.patcher" else real(name, *a))
    assert hosts.family() == "forge"

    def no_backend(name, *a):
        if name.startswith("backend"):
            raise ModuleNotFoundError(name)
        return real(name, *a)
    monkeypatch.setattr(importlib.util, "find_spec", no_backend)
    assert hosts.family() == "a1111"  # nor reforge here


class Condition:
    """Forge's backend.sampling.condition.Condition, as calc_cond_uncond_batch uses it."""

    def __init__(self, cond):
        self.cond = cond

    def process_cond(self, batch_size, device, **kwargs):
        return Condition(self.cond.repeat(batch_size // self.cond.shape[0], *[1] * (self.cond.dim() - 1)).to(device))

    def concat(self, others):
        return torch.cat([self.cond] + [other.cond for other in others])


def entries(seed):
    torch.manual_seed(seed)
    return [{"model_conds": {"c_crossattn": Condition(torch.randn(1, 5, 8)), "y": Condition(torch.randn(1, 3))}}
            for _ in range(2)]


@pytest.mark.parametrize("cond_or_uncond", [[1, 0], [0, 1], [0]])
def test_batched_conditioning_appends_the_base_chunks_in_the_hosts_order(cond_or_uncond):
    lora, base = entries(0), entries(1)
    x = torch.zeros(len(cond_or_uncond), 4, 8, 8)
    chunks = [{k: v.process_cond(1, "cpu").cond for k, v in lora[kind]["model_conds"].items()}
              for kind in cond_or_uncond]
    host_c = {key: torch.cat([chunk[key] for chunk in chunks]) for key in ("c_crossattn", "y")}
    host_c["c_concat"] = torch.randn(len(cond_or_uncond), 4, 8, 8)
    host_c["transformer_options"] = {"cond_or_uncond": cond_or_uncond, "cond_mark": torch.tensor(cond_or_uncond),
                                     "cond_indices": [i for i, k in enumerate(cond_or_uncond) if k == 0]}
    joined = patcher_hooks.batched_conditioning(host_c, base, cond_or_uncond, x)
    rows = len(cond_or_uncond)
    assert torch.equal(joined["c_crossattn"][:rows], host_c["c_crossattn"])
    for row, kind in enumerate(cond_or_uncond):
        assert torch.equal(joined["c_crossattn"][rows + row], base[kind]["model_conds"]["c_crossattn"].cond[0])
        assert torch.equal(joined["y"][rows + row], base[kind]["model_conds"]["y"].cond[0])
    assert torch.equal(joined["c_concat"], torch.cat([host_c["c_concat"]] * 2)), "a key the base lacks repeats"
    options = joined["transformer_options"]
    assert options["cond_or_uncond"] == cond_or_uncond * 2
    assert options["cond_indices"] == [i for i, k in enumerate(cond_or_uncond * 2) if k == 0]
    assert host_c["transformer_options"]["cond_or_uncond"] == cond_or_uncond, "the host's options stay"


def test_batched_conditioning_refuses_different_shapes():
    lora, base = entries(0), entries(1)
    for entry in base:  # a longer prompt for the base model
        entry["model_conds"]["c_crossattn"] = Condition(torch.randn(1, 10, 8))
    host_c = {"c_crossattn": torch.cat([entry["model_conds"]["c_crossattn"].cond for entry in lora[::-1]])}
    with pytest.raises(ValueError, match="c_crossattn differs in shape"):
        patcher_hooks.batched_conditioning(host_c, base, [1, 0], torch.zeros(2, 4, 8, 8))


def test_base_predictions_split_the_chunks_by_kind():
    rows = torch.arange(4.0).reshape(4, 1)
    cond, uncond = patcher_hooks.base_predictions(rows, [1, 0])
    assert torch.equal(cond, rows[2:]) and torch.equal(uncond, rows[:2])
    cond, uncond = patcher_hooks.base_predictions(rows[:2], [0])
    assert torch.equal(cond, rows[:2]) and torch.equal(uncond, torch.zeros(2, 1))
