"""Tier 2: Forge's LoRA switch on a small UNet-shaped model, merged and online patches."""
import copy

import pytest
import torch

from lib_autolora.hosts.forge.lora import ForgeLoraSwitch
from tests.support.forge_like_lora import ForgeLikeLoader, get_attr, set_attr
from tests.support.tiny_unet import make_tiny_unet

MERGED = ["input_blocks.0.weight", "input_blocks.2.transformer_blocks.0.attn2.to_k.weight",
          "input_blocks.2.transformer_blocks.0.ff.0.weight", "middle_block.0.in_layers.2.weight", "out.2.weight",
          "output_blocks.2.transformer_blocks.0.norm2.bias"]
ONLINE = ["middle_block.1.transformer_blocks.0.attn2.to_v.weight"]


@pytest.fixture
def setup():
    plain = make_tiny_unet()
    model = copy.deepcopy(plain)
    loader = ForgeLikeLoader(model)
    generator = torch.Generator().manual_seed(3)
    patches = {key: torch.randn(get_attr(model, key).shape, generator=generator) * 0.2 for key in MERGED + ONLINE}
    loader.refresh(patches, online=set(ONLINE))
    torch.manual_seed(1)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0]), torch.randn(2, 5, 24))
    return plain, model, ForgeLoraSwitch(model, get_attr, set_attr), inputs


@torch.no_grad()
def test_off_is_the_model_without_patches_and_on_again_is_the_patched_model(setup):
    plain, model, switch, inputs = setup
    patched = model(*inputs)
    assert not torch.equal(patched, plain(*inputs))
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    assert torch.equal(model(*inputs), patched)
    assert switch.switches == 1


@torch.no_grad()
def test_originals_on_the_same_device_are_used_as_they_are(setup):
    _, model, switch, inputs = setup
    with switch.networks_off():
        assert all(get_attr(model, key) is model.lora_loader.backup[key] for key in MERGED)
    assert switch.held_bytes() == 0


@torch.no_grad()
def test_an_error_inside_restores_weights_and_online_patches(setup):
    _, model, switch, inputs = setup
    patched = model(*inputs)
    weights = {key: get_attr(model, key) for key in MERGED}
    online_layer = get_attr(model, ONLINE[0].rpartition(".")[0])
    with pytest.raises(RuntimeError):
        with switch.networks_off():
            assert not hasattr(online_layer, "forge_online_loras")
            raise RuntimeError("interrupted")
    assert all(get_attr(model, key) is weight for key, weight in weights.items())
    assert "weight" in online_layer.forge_online_loras
    assert torch.equal(model(*inputs), patched)


@torch.no_grad()
def test_a_copy_is_made_once_when_the_original_lives_elsewhere(setup):
    _, model, switch, inputs = setup
    key = MERGED[1]
    model.lora_loader.backup[key] = model.lora_loader.backup[key].double()  # stands for another device
    with switch.networks_off():
        first = get_attr(model, key)
    with switch.networks_off():
        assert get_attr(model, key) is first
    assert first.dtype == torch.float32
    assert switch.held_bytes() == first.numel() * first.element_size()
    switch.release()
    assert switch.held_bytes() == 0


@torch.no_grad()
def test_nothing_patched_means_nothing_to_switch(setup):
    plain, model, switch, inputs = setup
    model.lora_loader.refresh({})
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    assert switch.switches == 0
