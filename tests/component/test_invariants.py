"""Tier 2: the invariants on a small UNet-shaped model with a real kohya LoRA, through a small
Euler sampling loop that guides as the hosts do (batched cond/uncond, CFG, then AutoLoRA)."""
import copy

import pytest
import torch

from lib_autolora.core import guidance
from lib_autolora.core.params import AutoLoraParams
from lib_autolora.hosts.a1111.networks import NetworkSwitch
from tests.support.a1111_like_lora import LoraHost, load_kohya
from tests.support.kohya_files import write_lora
from tests.support.tiny_unet import LORA_LAYERS, make_tiny_unet

CFG = 6.0
SIGMAS = torch.tensor([10.0, 5.0, 2.5, 1.2, 0.6, 0.3, 0.0])


def evaluate(model, x, sigma, cond, uncond):
    """One batched cond+uncond evaluation -> (uncond, cond) x0 predictions."""
    x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
    eps = model(x_in / (sigma_in[:, None, None, None] ** 2 + 1) ** 0.5, sigma_in, torch.cat([cond, uncond]))
    x0 = x_in - sigma_in[:, None, None, None] * eps
    c, u = x0.chunk(2)
    return u, c


def sample(denoise, seed=3):
    torch.manual_seed(seed)
    x = torch.randn(1, 4, 8, 8) * SIGMAS[0]
    for i, (s, s_next) in enumerate(zip(SIGMAS[:-1], SIGMAS[1:])):
        denoised = denoise(x, s.reshape(1), i / (len(SIGMAS) - 1))
        x = x + (x - denoised) / s * (s_next - s)
    return x


def plain(model, cond, uncond, scale=CFG):
    return lambda x, s, progress: guidance.cfg(*evaluate(model, x, s, cond, uncond), scale)


def autolora(model, switch, params, cond, uncond, base_cond, base_uncond):
    def denoise(x, s, progress):
        passes = guidance.passes_for(params, progress)
        w1, w2 = params.scales(CFG)
        if passes is guidance.Passes.LORA:
            return guidance.cfg(*evaluate(model, x, s, cond, uncond), w2)
        with switch.networks_off():
            base = guidance.cfg(*evaluate(model, x, s, base_cond, base_uncond), w1)
        if passes is guidance.Passes.BASE:
            return base
        lora = guidance.cfg(*evaluate(model, x, s, cond, uncond), w2)
        return guidance.autolora(base, lora, params.gamma)
    return denoise


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base_model = make_tiny_unet()
    lora_model = copy.deepcopy(base_model)
    host = LoraHost(lora_model)
    path = write_lora(tmp_path_factory.mktemp("lora") / "style.safetensors", base_model, LORA_LAYERS, strength=1.5)
    host.loaded_networks.append(load_kohya(path, "style"))
    switch = NetworkSwitch(host.loaded_networks, host.layers.values())
    torch.manual_seed(7)
    # the LoRA's text encoder changes the prompt's encoding; the base model sees the original one
    cond, uncond, base_cond, base_uncond = (torch.randn(1, 5, 24) for _ in range(4))
    return base_model, lora_model, switch, (cond, uncond, base_cond, base_uncond)


@torch.no_grad()
def test_gamma_one_with_w2_equal_cfg_is_plain_lora_generation(world):
    _, lora_model, switch, (c, u, bc, bu) = world
    expected = sample(plain(lora_model, c, u))
    got = sample(autolora(lora_model, switch, AutoLoraParams(True, 1.0, None, CFG), c, u, bc, bu))
    assert torch.equal(got, expected)
    assert switch.switches == 0, "gamma 1 must not run the base model"


@torch.no_grad()
def test_gamma_zero_with_w1_equal_cfg_is_the_model_without_the_lora(world):
    base_model, lora_model, switch, (c, u, bc, bu) = world
    expected = sample(plain(base_model, bc, bu))
    got = sample(autolora(lora_model, switch, AutoLoraParams(True, 0.0, CFG, None), c, u, bc, bu))
    assert torch.equal(got, expected)


@torch.no_grad()
def test_autolora_differs_from_both_and_leaves_the_lora_model_as_it_was(world):
    base_model, lora_model, switch, (c, u, bc, bu) = world
    lora_only = sample(plain(lora_model, c, u))
    without = sample(plain(base_model, bc, bu))
    got = sample(autolora(lora_model, switch, AutoLoraParams(True, 1.5), c, u, bc, bu))
    assert not torch.allclose(got, lora_only, atol=1e-3)
    assert not torch.allclose(got, without, atol=1e-3)
    assert torch.equal(sample(plain(lora_model, c, u)), lora_only)


@torch.no_grad()
def test_steps_outside_the_range_are_plain_lora_steps(world):
    _, lora_model, switch, (c, u, bc, bu) = world
    switches = switch.switches
    params = AutoLoraParams(True, 1.5, None, None, start=0.5, end=1.0)
    got = sample(autolora(lora_model, switch, params, c, u, bc, bu))
    assert switch.switches - switches == 3  # the calls at progress 3/6, 4/6 and 5/6
    assert not torch.equal(got, sample(plain(lora_model, c, u)))
