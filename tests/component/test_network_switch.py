"""Tier 2: the A1111 network switch on a small UNet-shaped model with real kohya LoRA, LoCon, LoHa,
norm and MultiheadAttention networks, in each memory mode."""
import copy

import pytest
import torch

from lib_autolora.hosts.a1111.networks import NetworkSwitch
from tests.support.a1111_like_lora import LoraHost, load_kohya
from tests.support.kohya_files import write_loha, write_lora, write_norm
from tests.support.tiny_unet import LOHA_LAYERS, LORA_LAYERS, NORM_LAYERS, make_tiny_unet

MODES = ("auto", "lean", "fast")
CONV_LAYERS = [name for name in LORA_LAYERS if name.startswith(("input_blocks.0", "input_blocks.1", "output_blocks.1",
                                                                  "out", "input_blocks.2.proj_in"))]
MHA = "input_blocks.2.transformer_blocks.0.mha"


def mha_lora(path, model, layer=MHA):
    """MultiheadAttention networks come as _q_proj/_k_proj/_v_proj/_out_proj parts, as in OpenCLIP."""
    import safetensors.torch
    dim = dict(model.named_modules())[layer].embed_dim
    g = torch.Generator().manual_seed(5)
    key = "lora_unet_" + layer.replace(".", "_")
    tensors = {}
    for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
        tensors[f"{key}_{part}.lora_down.weight"] = torch.randn(2, dim, generator=g) * 0.3
        tensors[f"{key}_{part}.lora_up.weight"] = torch.randn(dim, 2, generator=g) * 0.3
        tensors[f"{key}_{part}.alpha"] = torch.tensor(2.0)
    safetensors.torch.save_file(tensors, path)


class World:
    """A plain model, its copy with the Lora stand-in, the networks loaded and the inputs."""

    def __init__(self, folder, files, mode="auto"):
        self.plain = make_tiny_unet()
        self.model = copy.deepcopy(self.plain)
        self.host = LoraHost(self.model)
        writers = {"lora": lambda p: write_lora(p, self.plain, LORA_LAYERS),
                   "loha": lambda p: write_loha(p, self.plain, LOHA_LAYERS),
                   "norm": lambda p: write_norm(p, self.plain, NORM_LAYERS),
                   "mha": lambda p: mha_lora(p, self.plain)}
        for name, make, multiplier in files:
            path = folder / f"{name}.safetensors"
            (make or writers[name])(path)
            self.host.loaded_networks.append(load_kohya(path, name, multiplier))
        self.switch = NetworkSwitch(self.host.loaded_networks, self.host.layers.values(), mode)
        torch.manual_seed(1)
        self.inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0]), torch.randn(2, 5, 24))

    def state(self):
        """Every tensor slot of the model as the very objects it holds, with their values."""
        return {k: (v, v.clone()) for k, v in self.model.state_dict(keep_vars=True).items()}

    def assert_state(self, state):
        now = self.model.state_dict(keep_vars=True)
        assert now.keys() == state.keys()
        for key, (tensor, values) in state.items():
            assert now[key] is tensor and torch.equal(now[key], values), key


ALL_KINDS = [("lora", None, 0.8), ("loha", None, 1.0), ("norm", None, 1.0), ("mha", None, 1.0)]


@pytest.fixture(params=MODES)
def world(request, tmp_path):
    return World(tmp_path, ALL_KINDS, request.param)


@torch.no_grad()
def test_networks_off_is_the_model_without_networks_and_on_again_is_the_merged_model(world):
    merged = world.model(*world.inputs)
    assert not torch.equal(merged, world.plain(*world.inputs)), "the networks must change the output"
    with world.switch.networks_off():
        off = world.model(*world.inputs)
    if world.switch.layers.path == "fast":
        assert torch.equal(off, world.plain(*world.inputs))
    else:
        torch.testing.assert_close(off, world.plain(*world.inputs), rtol=1e-4, atol=1e-5)
    with world.switch.networks_off(exact=True):
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    assert torch.equal(world.model(*world.inputs), merged)


def test_auto_takes_the_free_copies_on_cpu_and_lean_the_terms_with_copies_for_the_rest(tmp_path):
    """On CPU A1111's backups live on the model's device: a copy is the backup itself, held for nothing."""
    for mode, path in (("auto", "fast"), ("fast", "fast"), ("lean", "lean")):
        world = World(tmp_path, ALL_KINDS, mode)
        with torch.no_grad():
            world.model(*world.inputs)
            with world.switch.networks_off():
                pass
        assert world.switch.layers.path == path
        terms = len(LORA_LAYERS) - 1  # the LoRA layer with a norm network too takes a copy
        copies = len(set(LOHA_LAYERS + NORM_LAYERS)) + 1
        expected = f"lean path (low-rank terms on {terms} layers, copies of {copies})" if path == "lean" else \
            f"fast path (copies of {terms + copies})"
        assert world.switch.describe() == expected
        if path == "fast":
            assert world.switch.held_bytes() == 0


@pytest.mark.parametrize("rank, alpha, multiplier", [(1, 1.0, 1.0), (4, 2.0, 0.6), (8, 16.0, -0.5), (16, 8.0, 1.3)])
@torch.no_grad()
def test_lean_equals_fast_for_lora_and_locon_files_at_ranks_and_weights(tmp_path, rank, alpha, multiplier):
    def write(path):
        write_lora(path, make_tiny_unet(), LORA_LAYERS, rank=rank, alpha=alpha)
    results = {}
    for mode in ("lean", "fast"):
        world = World(tmp_path, [("lora", write, multiplier)], mode)
        world.model(*world.inputs)
        with world.switch.networks_off():
            results[mode] = world.model(*world.inputs)
        assert world.switch.describe().startswith(f"{mode} path")
    torch.testing.assert_close(results["lean"], results["fast"], rtol=1e-4, atol=1e-5)
    assert torch.equal(results["fast"], world.plain(*world.inputs))


@pytest.mark.parametrize("conv_only, tucker", [(False, False), (True, False), (True, True)])
@torch.no_grad()
def test_lean_equals_fast_for_two_networks_at_once_and_on_conv_layers(tmp_path, conv_only, tucker):
    layers = CONV_LAYERS if conv_only else LORA_LAYERS
    files = [("a", lambda p: write_lora(p, make_tiny_unet(), layers, rank=4, seed=3, tucker=tucker), 0.7),
             ("b", lambda p: write_lora(p, make_tiny_unet(), layers[::2], rank=2, seed=4, alpha=1.0), 1.1)]
    results = {}
    for mode in ("lean", "fast"):
        world = World(tmp_path, files, mode)
        merged = world.model(*world.inputs)
        with world.switch.networks_off():
            results[mode] = world.model(*world.inputs)
        assert torch.equal(world.model(*world.inputs), merged)
    assert world.switch.describe() == f"fast path (copies of {len(layers)})"
    assert not torch.allclose(merged, results["fast"], atol=1e-3)
    torch.testing.assert_close(results["lean"], results["fast"], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a_loha_file_falls_back_to_exact_copies_in_lean_mode(tmp_path):
    world = World(tmp_path, [("loha", None, 1.0)], "lean")
    world.model(*world.inputs)
    with world.switch.networks_off():
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    assert world.switch.describe() == f"lean path (copies of {len(LOHA_LAYERS)})"


@torch.no_grad()
def test_originals_on_another_device_are_copied_in_fast_mode_and_only_factors_are_held_in_lean(tmp_path):
    """Backups in float64 stand for backups on the CPU of a CUDA model: a copy then costs memory."""
    held = {}
    for mode in ("fast", "lean"):
        world = World(tmp_path, [("lora", None, 1.0)], mode)
        world.model(*world.inputs)
        for layer in world.host.layers.values():
            if torch.is_tensor(getattr(layer, "network_weights_backup", None)):
                layer.network_weights_backup = layer.network_weights_backup.double()
        with world.switch.networks_off():
            off = world.model(*world.inputs)
        torch.testing.assert_close(off, world.plain(*world.inputs), rtol=1e-4, atol=1e-5)
        held[mode] = world.switch.held_bytes()
        changed = world.switch.changed_bytes()
    modules = dict(world.model.named_modules())
    weights = [modules[name].weight for name in LORA_LAYERS]
    biases = [modules[name].bias for name in LORA_LAYERS if modules[name].bias is not None]
    assert changed == sum(t.numel() * 4 for t in weights + biases)
    assert held["fast"] == sum(w.numel() * 4 for w in weights), "the biases' backups are float32: used as they are"
    factors = sum(4 * 4 * (w.shape[0] + w[0].numel()) for w in weights)  # rank 4: up and down in float32
    assert held["lean"] == factors


@torch.no_grad()
def test_switching_copies_nothing_from_the_cpu_backups_once_merged(world):
    world.model(*world.inputs)
    restores = world.host.restores
    for _ in range(5):
        with world.switch.networks_off():
            world.model(*world.inputs)
        world.model(*world.inputs)
    assert world.host.restores == restores
    assert world.switch.switches == 5


@torch.no_grad()
def test_layers_not_merged_yet_take_the_hosts_path_and_stay_exact(world):
    with world.switch.networks_off():  # before any LoRA forward: nothing is merged
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    lora_out = world.model(*world.inputs)
    state = world.state()
    with world.switch.networks_off(exact=True):
        assert torch.equal(world.model(*world.inputs), world.plain(*world.inputs))
    assert torch.equal(world.model(*world.inputs), lora_out)
    world.assert_state(state)


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
@torch.no_grad()
def test_an_error_or_interrupt_inside_leaves_networks_weights_and_bookkeeping_bit_for_bit(world, error):
    merged = world.model(*world.inputs)
    state = world.state()
    names = {n: getattr(layer, "network_current_names", None) for n, layer in world.host.layers.items()}
    networks = list(world.host.loaded_networks)
    with pytest.raises(type(error)):
        with world.switch.networks_off():
            world.model(*world.inputs)
            raise error
    assert world.host.loaded_networks == networks
    assert {n: getattr(layer, "network_current_names", None) for n, layer in world.host.layers.items()} == names
    assert all("forward" not in layer.__dict__ or layer.__dict__["forward"].__name__ == "forward"
               for layer in world.host.layers.values()), "the host's own instance forwards are back"
    world.assert_state(state)
    assert torch.equal(world.model(*world.inputs), merged)


@torch.no_grad()
def test_a_batched_call_runs_the_lora_rows_with_and_the_base_rows_without_the_networks(world):
    x, sigma, context = world.inputs
    merged = world.model(*world.inputs)
    state = world.state()
    assert world.switch.merged_everywhere()
    with world.switch.networks_off(batch_rows=2):
        both = world.model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([context, context]))
    torch.testing.assert_close(both[:2], merged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[2:], world.plain(*world.inputs), rtol=1e-4, atol=1e-5)
    world.assert_state(state)
    assert torch.equal(world.model(*world.inputs), merged)


@torch.no_grad()
def test_release_drops_what_the_switch_held(world):
    world.model(*world.inputs)
    with world.switch.networks_off():
        world.model(*world.inputs)
    world.switch.release()
    assert world.switch.held_bytes() == 0


@torch.no_grad()
def test_no_networks_means_nothing_to_switch(world):
    world.host.loaded_networks.clear()
    with world.switch.networks_off():
        out = world.model(*world.inputs)
    assert torch.equal(out, world.plain(*world.inputs))
    assert world.switch.switches == 0
