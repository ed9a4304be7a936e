"""Tier 2: Forge's LoRA switch on a small UNet-shaped model: merged and online patches, kohya LoRA,
LoCon and LoHa files as Forge's patches, in each memory mode."""
import copy

import pytest
import torch

from lib_autolora.hosts.forge.lora import ForgeLoraSwitch
from tests.support.forge_like_lora import ForgeLikeLoader, diff_patches, get_attr, kohya_patches
from tests.support.kohya_files import write_loha, write_lora
from tests.support.tiny_unet import LOHA_LAYERS, LORA_LAYERS, make_tiny_unet

MERGED = ["input_blocks.0.weight", "input_blocks.2.transformer_blocks.0.attn2.to_k.weight",
          "input_blocks.2.transformer_blocks.0.ff.0.weight", "middle_block.0.in_layers.2.weight", "out.2.weight",
          "output_blocks.2.transformer_blocks.0.norm2.bias"]
ONLINE = ["middle_block.1.transformer_blocks.0.attn2.to_v.weight"]
MODES = ("auto", "lean", "fast")


class World:
    def __init__(self, patches_for, mode="auto"):
        """`patches_for(plain model)` -> the patcher's lora_patches."""
        self.plain = make_tiny_unet()
        self.model = copy.deepcopy(self.plain)
        self.loader = ForgeLikeLoader(self.model)
        self.patches = patches_for(self.plain)
        self.loader.refresh(self.patches)
        self.switch = ForgeLoraSwitch(self.model, self.patches, mode)
        torch.manual_seed(1)
        self.inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0]), torch.randn(2, 5, 24))

    def state(self):
        return {k: (v, v.clone()) for k, v in self.model.state_dict(keep_vars=True).items()}

    def assert_state(self, state):
        now = self.model.state_dict(keep_vars=True)
        assert now.keys() == state.keys()
        assert all(now[k] is tensor and torch.equal(now[k], values) for k, (tensor, values) in state.items())


def diffs(plain):
    generator = torch.Generator().manual_seed(3)
    deltas = {key: torch.randn(get_attr(plain, key).shape, generator=generator) * 0.2 for key in MERGED + ONLINE}
    return {**diff_patches({k: deltas[k] for k in MERGED}),
            **diff_patches({k: deltas[k] for k in ONLINE}, "online", online=True)}


def kohya(tmp_path, *files):
    """`files`: (writer, strength) pairs; each writer(path, plain model) writes one kohya file."""
    def patches_for(plain):
        patches = {}
        for index, (write, strength) in enumerate(files):
            path = tmp_path / f"file{index}.safetensors"
            write(path, plain)
            patches.update(kohya_patches(path, plain, strength))
        return patches
    return patches_for


@pytest.fixture(params=MODES)
def world(request):
    return World(diffs, request.param)


@torch.no_grad()
def test_off_is_the_model_without_patches_and_on_again_is_the_patched_model(world):
    patched = world.model(*world.inputs)
    assert not torch.equal(patched, world.plain(*world.inputs))
    with world.switch.networks_off():
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    assert torch.equal(world.model(*world.inputs), patched)
    assert world.switch.switches == 1


@torch.no_grad()
def test_originals_on_the_same_device_are_used_as_they_are_and_diffs_take_them_in_every_mode(world):
    with world.switch.networks_off():
        for key in MERGED:
            layer_path, _, name = key.rpartition(".")
            current = get_attr(world.model, key)
            assert current.data_ptr() == world.loader.backup[key].data_ptr()
    assert world.switch.held_bytes() == 0
    online = f"on-the-fly LoRA taken off {len(ONLINE)} layers"
    assert world.switch.describe().endswith(f"(copies of {len(MERGED)}), {online}")


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
@torch.no_grad()
def test_an_error_or_interrupt_inside_restores_weights_and_online_patches(world, error):
    patched = world.model(*world.inputs)
    state = world.state()
    online_layer = get_attr(world.model, ONLINE[0].rpartition(".")[0])
    with pytest.raises(type(error)):
        with world.switch.networks_off():
            assert not hasattr(online_layer, "forge_online_loras")
            raise error
    world.assert_state(state)
    assert "weight" in online_layer.forge_online_loras
    assert torch.equal(world.model(*world.inputs), patched)


@torch.no_grad()
def test_a_copy_is_made_once_when_the_original_lives_elsewhere():
    world = World(diffs, "fast")
    key = MERGED[1]
    world.loader.backup[key] = world.loader.backup[key].double()  # stands for another device
    with world.switch.networks_off():
        first = get_attr(world.model, key)
    with world.switch.networks_off():
        assert get_attr(world.model, key) is first
    assert first.dtype == torch.float32
    assert world.switch.held_bytes() == first.numel() * first.element_size()
    world.switch.release()
    assert world.switch.held_bytes() == 0


@pytest.mark.parametrize("rank, alpha, strength, tucker", [(1, 1.0, 1.0, False), (4, 2.0, 0.6, False),
                                                           (8, 16.0, -0.5, True), (16, None, 1.3, False)])
@torch.no_grad()
def test_lean_equals_fast_for_lora_and_locon_files_at_ranks_and_weights(tmp_path, rank, alpha, strength, tucker):
    write = kohya(tmp_path,
                  (lambda p, m: write_lora(p, m, LORA_LAYERS, rank=rank, alpha=alpha, tucker=tucker), strength))
    results = {}
    for mode in ("lean", "fast"):
        world = World(write, mode)
        patched = world.model(*world.inputs)
        with world.switch.networks_off():
            results[mode] = world.model(*world.inputs)
        assert torch.equal(world.model(*world.inputs), patched)
        assert world.switch.describe().startswith(f"{mode} path")
    assert world.switch.describe() == f"fast path (copies of {len(LORA_LAYERS)})"
    assert torch.equal(results["fast"], world.plain(*world.inputs))
    torch.testing.assert_close(results["lean"], results["fast"], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_lean_equals_fast_for_two_files_at_once(tmp_path):
    write = kohya(tmp_path, (lambda p, m: write_lora(p, m, LORA_LAYERS, rank=4, seed=3), 0.7),
                  (lambda p, m: write_lora(p, m, LORA_LAYERS[::2], rank=2, seed=4, alpha=1.0), 1.1))
    results = {}
    for mode in ("lean", "fast"):
        world = World(write, mode)
        world.model(*world.inputs)
        with world.switch.networks_off():
            results[mode] = world.model(*world.inputs)
    world_lean = World(write, "lean")
    with world_lean.switch.networks_off():
        pass
    assert world_lean.switch.describe() == f"lean path (low-rank terms on {len(LORA_LAYERS)} layers)"
    torch.testing.assert_close(results["lean"], results["fast"], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a_loha_file_falls_back_to_exact_copies_in_lean_mode_and_exact_calls_never_take_terms(tmp_path):
    write = kohya(tmp_path, (lambda p, m: write_loha(p, m, LOHA_LAYERS), 1.0),
                  (lambda p, m: write_lora(p, m, LORA_LAYERS), 1.0))
    world = World(write, "lean")
    with world.switch.networks_off(exact=True):
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    assert world.switch.describe() == f"lean path (low-rank terms on {len(LORA_LAYERS)} layers, copies of 2)"


@torch.no_grad()
def test_patches_other_than_those_merged_give_no_terms(tmp_path):
    """The switch reads terms from the patcher's lora_patches only when they are what the loader merged."""
    write = kohya(tmp_path, (lambda p, m: write_lora(p, m, LORA_LAYERS), 1.0))
    world = World(write, "lean")
    world.switch = ForgeLoraSwitch(world.model, {("another file", 1.0, 1.0, False): {}}, "lean")
    with world.switch.networks_off():
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    assert world.switch.describe() == f"lean path (copies of {len(LORA_LAYERS)})"


@torch.no_grad()
def test_a_batched_call_runs_the_lora_rows_with_and_the_base_rows_without_the_patches(tmp_path):
    for mode in MODES:
        world = World(kohya(tmp_path, (lambda p, m: write_lora(p, m, LORA_LAYERS), 1.0)), mode)
        x, sigma, context = world.inputs
        patched = world.model(*world.inputs)
        state = world.state()
        with world.switch.networks_off(batch_rows=2):
            both = world.model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([context, context]))
        torch.testing.assert_close(both[:2], patched, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(both[2:], world.plain(*world.inputs), rtol=1e-4, atol=1e-5)
        world.assert_state(state)


@torch.no_grad()
def test_nothing_patched_means_nothing_to_switch(world):
    world.loader.refresh({})
    with world.switch.networks_off():
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    assert world.switch.switches == 0


@torch.no_grad()
@pytest.mark.parametrize("mode", MODES)
def test_patches_merged_again_mid_sampling_are_followed(tmp_path, mode):
    """LoRA Block Weight's stop step on Forge: it sets the patches' strengths to 0 in place, refreshes
    the loader under a renamed key (to force the merge) and puts the old key back."""
    world = World(kohya(tmp_path, (lambda p, m: write_lora(p, m, LORA_LAYERS), 1.0)), mode)
    with world.switch.networks_off():
        world.model(*world.inputs)
    (file_key, patches), = world.patches.items()
    for key, entries in patches.items():
        patches[key] = [[0.0, *entry[1:]] for entry in entries]
    renamed = (f"{file_key[0]}_0.5", *file_key[1:])
    world.patches[renamed] = world.patches.pop(file_key)
    world.loader.refresh(world.patches)
    world.patches[file_key] = world.patches.pop(renamed)
    with world.switch.networks_off():
        base = world.model(*world.inputs)
    torch.testing.assert_close(base, world.plain(*world.inputs), rtol=1e-4, atol=1e-5)
