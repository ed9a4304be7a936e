"""Tier 2: the ldm_patched generation (`lib_autolora.hosts.reforge.adapter.ReforgeGeneration`, for
reForge and Forge Classic) driven end to end through the script's hooks (lib_autolora.webui.lifecycle) on
a stand-in of reForge (fake_reforge around fake_patcher_webui): txt2img with Euler on a small UNet and
text encoder, a kohya LoRA on both merged by the ModelPatcher, the host's own samplers module and memory
manager, with the UNet's weights merged as new Parameters or in place, or left unmerged on low-VRAM
layers. The shared driver, reference and state checks are in support/patcher_generation_checks.py."""
import pytest
import torch

from lib_autolora.hosts.layers import layer_off
from tests.support import fake_reforge
from tests.support.patcher_generation_checks import (
    CFG,
    HR_CFG,
    PROMPTS,
    assert_host_as_before,
    assert_next_generations_as_before,
    check_an_error_in_the_base_pass,
    check_an_interrupt,
    check_gamma_one_is_plain,
    generate,
    held_while_sampling_and_after,
    host_state,
    plain_generations,
    reference,
    world_with_adapter,
)

MODES = ("auto", "lean", "fast")
LOW_VRAM_LAYERS = ("diffusion_model.input_blocks.2.transformer_blocks.0.attn2.to_k",  # LoRA'd Linear layers the
                   "diffusion_model.input_blocks.2.transformer_blocks.0.ff.0")  # patcher leaves on the offload device
LOADS = {"merged": {}, "in place": {"inplace": True}, "low VRAM": {"low_vram_layers": LOW_VRAM_LAYERS}}


@pytest.fixture
def reforge(monkeypatch, tmp_path, request):
    """The stand-in reForge with the adapter imported against it and the LoRA file `style`. Parametrized
    indirectly with fake_reforge.install's options (`backup_dtype`, `inplace`, `low_vram_layers`)."""
    world = fake_reforge.install(monkeypatch, **getattr(request, "param", {}))
    with world_with_adapter(world, "lib_autolora.hosts.reforge.adapter", "ReforgeGeneration", tmp_path):
        yield world


# -- 1, 2: gamma 1 and gamma 0 are the plain generations, bit for bit --

@pytest.mark.parametrize("hires, n_iter", [(False, 1), (True, 2)], ids=["txt2img", "hires, batch count 2"])
@pytest.mark.parametrize("args", [{"gamma": 1.0}, {"gamma": 1.0, "lora_cfg": CFG, "hires": "own",
                                                   "hires_gamma": 1.0, "hires_lora_cfg": HR_CFG}],
                         ids=["w2 follows", "w2 = CFG"])
def test_gamma_one_with_w2_at_the_cfg_scale_is_plain_lora_generation_and_runs_no_base_pass(reforge, args, hires,
                                                                                            n_iter):
    check_gamma_one_is_plain(reforge, args, hires, n_iter)


@pytest.mark.parametrize("reforge", LOADS.values(), ids=LOADS.keys(), indirect=True)
@pytest.mark.parametrize("hires, n_iter", [(False, 1), (True, 2)], ids=["txt2img", "hires, batch count 2"])
@pytest.mark.parametrize("memory", MODES)
def test_gamma_zero_with_w1_at_the_cfg_scale_is_the_model_without_the_lora(reforge, memory, hires, n_iter):
    without = generate(reforge, lora=False, hires=hires, n_iter=n_iter)
    lora = generate(reforge, hires=hires, n_iter=n_iter)
    assert not torch.allclose(lora.samples, without.samples, atol=1e-2), "the LoRA must change the images"
    args = {"gamma": 0.0, "base_cfg": CFG, "hires": "own", "hires_gamma": 0.0, "hires_base_cfg": HR_CFG,
            "memory": memory}
    run = generate(reforge, [args], hires=hires, n_iter=n_iter)
    assert torch.equal(run.samples, without.samples)


# -- 3, 5: gamma 1.5 is the formula on separately run models, hires pass and batch count 2 included --

@pytest.mark.parametrize("reforge", LOADS.values(), ids=LOADS.keys(), indirect=True)
@pytest.mark.parametrize("w1, w2, skip_early", [(None, None, 0.0), (4.0, 8.0, 0.0), (4.0, 8.0, 0.5)],
                         ids=["w follow CFG", "w1 4, w2 8", "skip early CFG"])
def test_gamma_above_one_is_the_formula_on_separately_run_models_in_lean_and_fast_mode(reforge, w1, w2, skip_early):
    """With "skip early CFG" the host runs no uncond on the first half of the steps: both models are
    guided by their cond alone there."""
    reforge.opts.skip_early_cond = skip_early
    expected = reference(reforge, 1.5, w1, w2)
    runs = {memory: generate(reforge, [{"gamma": 1.5, "base_cfg": w1, "lora_cfg": w2, "memory": memory}])
            for memory in ("lean", "fast")}
    assert not torch.allclose(expected, generate(reforge).samples, atol=1e-2), "the guidance must change the images"
    for memory, run in runs.items():
        torch.testing.assert_close(run.samples, expected, rtol=1e-4, atol=1e-4,
                                   msg=lambda message, mode=memory: f"{mode}: {message}")
    torch.testing.assert_close(runs["lean"].samples, runs["fast"].samples, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, hires_params", [
    ({"gamma": 1.5}, None),
    ({"gamma": 1.5, "base_cfg": 4.0, "hires": "own", "hires_gamma": 2.0, "hires_base_cfg": 3.0,
      "hires_lora_cfg": 5.0}, (2.0, 3.0, 5.0)),
    ({"gamma": 1.5, "hires": "off"}, (1.0, None, None)),
], ids=["hires same", "hires own", "hires off"])
def test_the_hires_pass_and_each_batch_are_guided_with_the_passs_settings(reforge, args, hires_params):
    expected = reference(reforge, args["gamma"], args.get("base_cfg"), None, hires=True, n_iter=2,
                         hires_params=hires_params)
    run = generate(reforge, [args], hires=True, n_iter=2)
    torch.testing.assert_close(run.samples, expected, rtol=1e-4, atol=1e-4)


def test_batched_evaluation_falls_back_to_two_calls_and_says_so_once(reforge, capsys):
    expected = reference(reforge, 1.5, None, None)
    run = generate(reforge, [{"gamma": 1.5, "batched": True}], n_iter=2)
    torch.testing.assert_close(run.samples[:len(PROMPTS)], expected, rtol=1e-4, atol=1e-4)
    said = "batched evaluation does not apply here (this WebUI's model call takes no extra rows)"
    assert capsys.readouterr().out.count(said) == 1


# -- 4: the host is left as it was --

@pytest.mark.parametrize("reforge", LOADS.values(), ids=LOADS.keys(), indirect=True)
@pytest.mark.parametrize("memory", MODES)
def test_finish_leaves_the_host_as_it_was(reforge, memory):
    plain = plain_generations(reforge)
    before = host_state(reforge)
    generate(reforge, [{"gamma": 1.5, "memory": memory}], hires=True, n_iter=2)
    assert_host_as_before(reforge, before)
    assert_next_generations_as_before(reforge, plain)


@pytest.mark.parametrize("reforge", LOADS.values(), ids=LOADS.keys(), indirect=True)
@pytest.mark.parametrize("memory", MODES)
def test_an_error_in_the_base_pass_mid_sampling_leaves_the_host_as_it_was(reforge, memory, capsys):
    check_an_error_in_the_base_pass(reforge, memory, capsys)


@pytest.mark.parametrize("hires", [False, True], ids=["txt2img", "hires"])
@pytest.mark.parametrize("memory", MODES)
def test_an_interrupt_leaves_the_host_as_it_was(reforge, memory, hires, capsys):
    check_an_interrupt(reforge, memory, hires, capsys)


# -- 6: nothing held past sampling --

@pytest.mark.parametrize("reforge", [{"backup_dtype": torch.float64},
                                     {"backup_dtype": torch.float64, "low_vram_layers": LOW_VRAM_LAYERS}],
                         ids=["merged", "low VRAM"], indirect=True)
@pytest.mark.parametrize("memory", MODES)
def test_nothing_is_held_after_each_sampling_pass(reforge, memory, monkeypatch):
    """What the switch holds is made in every sampling pass and gone when it ends: at post_sample, and at
    the hires pass's decode, which the host runs before post_sample. The backups are float64 (a copy of an
    original costs memory), and the CPU reports a budget (so the lean path holds copies too)."""
    monkeypatch.setattr(layer_off, "device_budget", lambda device: 2**30)
    while_sampling, after = held_while_sampling_and_after(reforge, [{"gamma": 1.5, "memory": memory}], hires=True,
                                                          n_iter=2)
    assert after == [("decode", 0), ("post_sample", 0)] * 2
    assert sorted(while_sampling) == [False, True] and all(max(held) > 0 for held in while_sampling.values())
