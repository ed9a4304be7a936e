"""Tier 1: the guidance math and the schedule."""
import pytest
import torch

from lib_autolora.core import guidance
from lib_autolora.core.guidance import Passes
from lib_autolora.core.params import AutoLoraParams


def test_cfg_is_uncond_plus_scale_times_difference():
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(guidance.cfg(uncond, cond, 2.0), torch.tensor([5.0, -2.0]))
    assert torch.equal(guidance.cfg(uncond, cond, 1.0), cond)


def test_autolora_blends_the_guided_predictions_with_gamma():
    base, lora = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 1.0])
    assert torch.equal(guidance.autolora(base, lora, 1.5), torch.tensor([2.5, 2.0]))
    assert torch.equal(guidance.autolora(base, lora, 0.5), torch.tensor([1.5, 0.0]))


def test_gamma_one_and_zero_return_an_input_unchanged():
    base, lora = torch.randn(3), torch.randn(3)
    assert guidance.autolora(base, lora, 1) is lora
    assert guidance.autolora(base, lora, 0.0) is base


def test_formula_matches_the_paper_written_out():
    torch.manual_seed(0)
    bu, bc, lu, lc = torch.randn(4, 16).double()
    w1, w2, gamma = 5.0, 7.0, 1.5
    expected = (bu + w1 * (bc - bu)) + gamma * ((lu + w2 * (lc - lu)) - (bu + w1 * (bc - bu)))
    got = guidance.autolora(guidance.cfg(bu, bc, w1), guidance.cfg(lu, lc, w2), gamma)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gamma, start, end, progress, passes", [
    (1.5, 0.0, 1.0, 0.0, Passes.BOTH),
    (1.5, 0.0, 1.0, 0.99, Passes.BOTH),
    (1.5, 0.2, 0.6, 0.1, Passes.LORA),
    (1.5, 0.2, 0.6, 0.2, Passes.BOTH),
    (1.5, 0.2, 0.6, 0.6, Passes.LORA),
    (1.0, 0.0, 1.0, 0.5, Passes.LORA),  # gamma 1 never runs the base model
    (0.0, 0.0, 1.0, 0.5, Passes.BASE),  # gamma 0 never needs the LoRA pass
    (0.0, 0.5, 1.0, 0.25, Passes.LORA),
])
def test_passes_per_call(gamma, start, end, progress, passes):
    params = AutoLoraParams(enabled=True, gamma=gamma, start=start, end=end)
    assert guidance.passes_for(params, progress) is passes
