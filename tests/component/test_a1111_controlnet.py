"""Tier 2: the A1111 adapter next to Mikubill's ControlNet (fake_controlnet, on fake_a1111's WebUI):
the base model's conds carry the marks ControlNet put on the host's, so its UNet hook tells prompt
rows from negative-prompt rows in the base pass as it does in the host's."""
import pytest
import torch

from tests.component import test_a1111_adapter
from tests.component.test_a1111_adapter import CFG, generate
from tests.support import fake_controlnet
from tests.support.a1111_like_lora import load_kohya
from tests.support.kohya_files import write_lora
from tests.support.tiny_unet import LORA_LAYERS

a1111 = test_a1111_adapter.a1111  # the fake WebUI with the adapter, as a fixture of this module too


@pytest.fixture
def with_controlnet(a1111, monkeypatch):
    fake_controlnet.install(monkeypatch, a1111)
    return a1111


def test_gamma_zero_equals_the_controlled_model_without_the_lora(with_controlnet):
    without = generate(with_controlnet, networks=False)
    run = generate(with_controlnet, [{"gamma": 0.0, "base_cfg": CFG}])
    assert torch.equal(run.samples, without.samples)


def test_with_a_weight_0_lora_the_base_pass_equals_the_lora_pass(with_controlnet, tmp_path):
    """The LoRA model is then the base model: any gamma gives the plain image if the base pass AutoLoRA
    adds sees the same conds, marks included, as the host's pass."""
    layers = test_a1111_adapter.TE_LAYERS + ["model.diffusion_model." + name for name in LORA_LAYERS]
    path = write_lora(tmp_path / "neutral.safetensors", with_controlnet.sd_model, layers)
    with_controlnet.style = load_kohya(path, "neutral", multiplier=0.0)
    plain = generate(with_controlnet)
    run = generate(with_controlnet, [{"gamma": 1.5}])
    assert run.generation.switch.switches > 0
    assert torch.equal(run.samples, plain.samples)
