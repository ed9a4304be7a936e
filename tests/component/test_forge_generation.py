"""Tier 2: the Forge generation (`lib_autolora.hosts.forge.adapter.ForgeGeneration`, for Forge dfdcbab and
Forge Neo) driven end to end through the script's hooks (lib_autolora.webui.lifecycle) on a stand-in of
Forge (fake_forge around fake_patcher_webui): txt2img with Euler on a small UNet and text encoder, a
kohya LoRA on both applied by Forge's LoRA loader, the host's own sampling function and memory manager.
The shared driver, reference and state checks are in support/patcher_generation_checks.py."""
import pytest
import torch

from tests.support import fake_forge
from tests.support.patcher_generation_checks import (
    CFG,
    HR_CFG,
    SIMPLE_PROMPTS,
    STEPS,
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
    unet_calls,
    world_with_adapter,
)

MODES = ("auto", "lean", "fast")  # on the CPU with backups on the load device, auto takes the fast path


@pytest.fixture
def forge(monkeypatch, tmp_path, request):
    """The stand-in Forge with the adapter imported against it and the LoRA file `style`. Parametrized
    indirectly with a dtype, the LoRA loader keeps its backups in it (as on another device: AutoLoRA's
    copies of the originals then cost memory, and `auto` takes the lean path)."""
    world = fake_forge.install(monkeypatch, getattr(request, "param", None))
    with world_with_adapter(world, "lib_autolora.hosts.forge.adapter", "ForgeGeneration", tmp_path):
        yield world


# -- 1, 2: gamma 1 and gamma 0 are the plain generations, bit for bit --

@pytest.mark.parametrize("hires, n_iter", [(False, 1), (True, 2)], ids=["txt2img", "hires, batch count 2"])
@pytest.mark.parametrize("args", [{"gamma": 1.0}, {"gamma": 1.0, "lora_cfg": CFG, "hires": "own",
                                                   "hires_gamma": 1.0, "hires_lora_cfg": HR_CFG}],
                         ids=["w2 follows", "w2 = CFG"])
def test_gamma_one_with_w2_at_the_cfg_scale_is_plain_lora_generation_and_runs_no_base_pass(forge, args, hires,
                                                                                            n_iter):
    check_gamma_one_is_plain(forge, args, hires, n_iter)


@pytest.mark.parametrize("hires, n_iter", [(False, 1), (True, 2)], ids=["txt2img", "hires, batch count 2"])
@pytest.mark.parametrize("memory", MODES)
def test_gamma_zero_with_w1_at_the_cfg_scale_is_the_model_without_the_lora(forge, memory, hires, n_iter):
    without = generate(forge, lora=False, hires=hires, n_iter=n_iter)
    lora = generate(forge, hires=hires, n_iter=n_iter)
    assert not torch.allclose(lora.samples, without.samples, atol=1e-2), "the LoRA must change the images"
    args = {"gamma": 0.0, "base_cfg": CFG, "hires": "own", "hires_gamma": 0.0, "hires_base_cfg": HR_CFG,
            "memory": memory}
    run = generate(forge, [args], hires=hires, n_iter=n_iter)
    assert torch.equal(run.samples, without.samples)


# -- 3, 5: gamma 1.5 is the formula on separately run models, hires pass and batch count 2 included --

@pytest.mark.parametrize("w1, w2, skip_early", [(None, None, 0.0), (4.0, 8.0, 0.0), (4.0, 8.0, 0.5)],
                         ids=["w follow CFG", "w1 4, w2 8", "skip early CFG"])
def test_gamma_above_one_is_the_formula_on_separately_run_models_in_lean_and_fast_mode(forge, w1, w2, skip_early):
    """With "skip early CFG" the host runs no uncond on the first half of the steps: both models are
    guided by their cond alone there."""
    forge.opts.skip_early_cond = skip_early
    expected = reference(forge, 1.5, w1, w2)
    runs = {memory: generate(forge, [{"gamma": 1.5, "base_cfg": w1, "lora_cfg": w2, "memory": memory}])
            for memory in ("lean", "fast")}
    assert not torch.allclose(expected, generate(forge).samples, atol=1e-2), "the guidance must change the images"
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
def test_the_hires_pass_and_each_batch_are_guided_with_the_passs_settings(forge, args, hires_params):
    """Forge runs process_before_every_sampling twice for the hires pass: on the first pass's forge
    objects, then on fresh ones."""
    expected = reference(forge, args["gamma"], args.get("base_cfg"), None, hires=True, n_iter=2,
                         hires_params=hires_params)
    run = generate(forge, [args], hires=True, n_iter=2)
    torch.testing.assert_close(run.samples, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("memory", MODES)
def test_batched_evaluation_is_the_formula_in_one_model_call_per_step(forge, memory, capsys):
    expected = reference(forge, 1.5, 4.0, None, prompts=SIMPLE_PROMPTS)
    calls = unet_calls(forge)
    run = generate(forge, [{"gamma": 1.5, "base_cfg": 4.0, "memory": memory, "batched": True}],
                   prompts=SIMPLE_PROMPTS)
    torch.testing.assert_close(run.samples, expected, rtol=1e-4, atol=1e-4)
    rows = 2 * len(SIMPLE_PROMPTS)  # the host's cond and uncond rows
    assert calls == [2 * rows] * STEPS, "each step's one model call takes the base rows too"
    assert "batched evaluation does not apply" not in capsys.readouterr().out


def test_batched_evaluation_with_an_and_prompt_falls_back_to_two_calls_and_says_so(forge, capsys):
    expected = reference(forge, 1.5, None, None)
    run = generate(forge, [{"gamma": 1.5, "batched": True}])
    torch.testing.assert_close(run.samples, expected, rtol=1e-4, atol=1e-4)
    assert capsys.readouterr().out.count("batched evaluation does not apply here") == 1


def test_batched_evaluation_where_the_host_splits_cond_and_uncond_falls_back_to_two_calls(forge, capsys):
    forge.memory.free_memory = forge.sd_model.forge_objects_original.unet.model.memory_required([3, 4, 8, 8])
    expected = reference(forge, 1.5, None, None, prompts=SIMPLE_PROMPTS)
    run = generate(forge, [{"gamma": 1.5, "batched": True}], prompts=SIMPLE_PROMPTS)
    torch.testing.assert_close(run.samples, expected, rtol=1e-4, atol=1e-4)
    assert capsys.readouterr().out.count("batched evaluation does not apply here") == 1


# -- 4: the host is left as it was --

@pytest.mark.parametrize("memory", MODES)
def test_finish_leaves_the_host_as_it_was(forge, memory):
    plain = plain_generations(forge)
    before = host_state(forge)
    generate(forge, [{"gamma": 1.5, "memory": memory}], hires=True, n_iter=2)
    assert_host_as_before(forge, before)
    assert_next_generations_as_before(forge, plain)


@pytest.mark.parametrize("memory", MODES)
def test_an_error_in_the_base_pass_mid_sampling_leaves_the_host_as_it_was(forge, memory, capsys):
    check_an_error_in_the_base_pass(forge, memory, capsys)


@pytest.mark.parametrize("hires", [False, True], ids=["txt2img", "hires"])
@pytest.mark.parametrize("memory", MODES)
def test_an_interrupt_leaves_the_host_as_it_was(forge, memory, hires, capsys):
    check_an_interrupt(forge, memory, hires, capsys)


# -- 6: nothing held past sampling --

@pytest.mark.parametrize("forge", [torch.float64], indirect=True)
@pytest.mark.parametrize("memory", MODES)
def test_nothing_is_held_after_each_sampling_pass(forge, memory):
    """What the switch holds is made in every sampling pass and gone when it ends: at post_sample, and at
    the hires pass's decode, which Forge runs before post_sample."""
    while_sampling, after = held_while_sampling_and_after(forge, [{"gamma": 1.5, "memory": memory}], hires=True,
                                                          n_iter=2)
    assert after == [("decode", 0), ("post_sample", 0)] * 2
    assert sorted(while_sampling) == [False, True] and all(max(held) > 0 for held in while_sampling.values())
