"""Tier 2: the ldm_patched LoRA switch on a small UNet-shaped model: reForge's and Forge Classic's
backups, merged as new Parameters or in place, and reForge's low-VRAM patches."""
import copy

import pytest
import torch

from lib_autolora.hosts.reforge.lora import ReforgeLoraSwitch
from tests.support.ldm_patched_like import BaseModelLike, LdmPatcherLike, LowVramPatch

UNET = "diffusion_model."
MERGED = [UNET + key for key in (
    "input_blocks.0.weight", "input_blocks.2.transformer_blocks.0.attn2.to_k.weight",
    "input_blocks.2.transformer_blocks.0.ff.0.weight", "middle_block.0.in_layers.2.weight", "out.2.weight",
    "output_blocks.2.transformer_blocks.0.norm2.bias")]
LOW_VRAM_LAYER = UNET + "middle_block.1.transformer_blocks.0.ff.0"  # a Linear: weight and bias patched per forward
LOW_VRAM = [LOW_VRAM_LAYER + ".weight", LOW_VRAM_LAYER + ".bias"]
STYLES = [("reforge", False), ("reforge", True), ("classic", False), ("classic", True)]


def make(style, inplace, low_vram=True):
    """(model without patches, patched model, its loaded patcher, inputs)."""
    torch.manual_seed(0)
    plain = BaseModelLike().eval()
    model = copy.deepcopy(plain)
    patcher = LdmPatcherLike(model, style, inplace)
    generator = torch.Generator().manual_seed(3)
    keys = MERGED + (LOW_VRAM if low_vram else [])
    patcher.patches = {key: torch.randn(model.get_parameter(key).shape, generator=generator) * 0.2 for key in keys}
    patcher.patch_model(low_vram=[LOW_VRAM_LAYER] if low_vram else [])
    torch.manual_seed(1)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0]), torch.randn(2, 5, 24))
    return plain, model, patcher, inputs


def switch_for(patcher):
    return ReforgeLoraSwitch(lambda: patcher, LowVramPatch)


@pytest.mark.parametrize("style, inplace", STYLES)
@torch.no_grad()
def test_off_is_the_model_without_patches_and_on_again_is_the_patched_model(style, inplace):
    plain, model, patcher, inputs = make(style, inplace)
    switch = switch_for(patcher)
    patched = model(*inputs)
    assert not torch.equal(patched, plain(*inputs))
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    assert torch.equal(model(*inputs), patched)
    assert switch.switches == 1


@torch.no_grad()
def test_in_place_merges_take_the_originals_from_the_backup_and_keep_the_merged_parameter():
    plain, model, patcher, inputs = make("reforge", True, low_vram=False)
    key = MERGED[1]
    merged = model.get_parameter(key)
    assert not torch.equal(merged, plain.get_parameter(key))  # the model's own Parameter holds merged values
    with switch_for(patcher).networks_off():
        assert torch.equal(model.get_parameter(key), plain.get_parameter(key))
    assert model.get_parameter(key) is merged
    assert torch.equal(merged, patcher.backup[key].weight + patcher.patches[key])


@torch.no_grad()
def test_the_backup_is_read_from_the_patcher_loaded_at_each_switch():
    """Classic: loading a clone unpatches the one loaded before and fills the clone's own backup."""
    plain, model, first, inputs = make("classic", False, low_vram=False)
    loaded = {"patcher": first}
    switch = ReforgeLoraSwitch(lambda: loaded["patcher"], None)
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    second = first.clone()
    first.unpatch_model()
    second.patch_model()
    loaded["patcher"] = second
    patched = model(*inputs)
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    assert torch.equal(model(*inputs), patched)


@torch.no_grad()
def test_low_vram_patches_come_off_and_other_weight_functions_stay():
    plain, model, patcher, inputs = make("reforge", False)
    layer = model.get_submodule(LOW_VRAM_LAYER)
    calls = []
    layer.weight_function.append(lambda weight: calls.append("wrapper") or weight)  # not LoRA: stays on
    functions = layer.weight_function
    with switch_for(patcher).networks_off():
        assert len(layer.weight_function) == 1
        assert not any(isinstance(f, LowVramPatch) for f in layer.weight_function + layer.bias_function)
        assert torch.equal(model(*inputs), plain(*inputs))
    assert calls == ["wrapper"]
    assert layer.weight_function is functions and isinstance(layer.bias_function[0], LowVramPatch)


@torch.no_grad()
def test_an_error_inside_restores_weights_and_function_lists():
    _, model, patcher, inputs = make("reforge", False)
    patched = model(*inputs)
    weights = {key: model.get_parameter(key) for key in MERGED}
    layer = model.get_submodule(LOW_VRAM_LAYER)
    functions = layer.weight_function, layer.bias_function
    with pytest.raises(RuntimeError):
        with switch_for(patcher).networks_off():
            raise RuntimeError("interrupted")
    assert all(model.get_parameter(key) is weight for key, weight in weights.items())
    assert (layer.weight_function, layer.bias_function) == functions
    assert torch.equal(model(*inputs), patched)


@torch.no_grad()
def test_originals_on_the_same_device_are_not_copied_and_others_once():
    _, model, patcher, inputs = make("classic", False, low_vram=False)
    switch = switch_for(patcher)
    with switch.networks_off():
        assert model.get_parameter(MERGED[0]).data_ptr() == patcher.backup[MERGED[0]].data_ptr()
    assert switch.held_bytes() == 0
    patcher.backup[MERGED[1]] = patcher.backup[MERGED[1]].double()  # stands for another device
    with switch.networks_off():
        first = model.get_parameter(MERGED[1])
    with switch.networks_off():
        assert model.get_parameter(MERGED[1]) is first
    assert first.dtype == torch.float32 and switch.held_bytes() == first.numel() * first.element_size()
    switch.release()
    assert switch.held_bytes() == 0


@torch.no_grad()
def test_nothing_patched_means_nothing_to_switch():
    plain, model, patcher, inputs = make("reforge", False, low_vram=False)
    patcher.unpatch_model()
    switch = switch_for(patcher)
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    assert switch.switches == 0
