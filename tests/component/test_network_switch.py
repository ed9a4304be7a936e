"""Tier 2: the A1111 network switch on a small UNet-shaped model with real kohya LoRA files."""
import copy

import pytest
import torch

from lib_autolora.hosts.a1111.networks import NetworkSwitch
from tests.support.a1111_like_lora import LoraHost, load_kohya
from tests.support.kohya_files import write_loha, write_lora, write_norm
from tests.support.tiny_unet import LOHA_LAYERS, LORA_LAYERS, NORM_LAYERS, make_tiny_unet


def mha_lora(path, model, layer="input_blocks.2.transformer_blocks.0.mha"):
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


@pytest.fixture
def setup(tmp_path):
    plain = make_tiny_unet()
    model = copy.deepcopy(plain)
    host = LoraHost(model)
    write_lora(tmp_path / "lora.safetensors", plain, LORA_LAYERS)
    write_loha(tmp_path / "loha.safetensors", plain, LOHA_LAYERS)
    write_norm(tmp_path / "norm.safetensors", plain, NORM_LAYERS)
    mha_lora(tmp_path / "mha.safetensors", plain)
    host.loaded_networks[:] = [load_kohya(tmp_path / f"{n}.safetensors", n, m)
                               for n, m in (("lora", 0.8), ("loha", 1.0), ("norm", 1.0), ("mha", 1.0))]
    switch = NetworkSwitch(host.loaded_networks, host.layers.values())
    torch.manual_seed(1)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0]), torch.randn(2, 5, 24))
    return plain, model, host, switch, inputs


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def test_networks_off_is_the_model_without_networks_and_on_again_is_the_merged_model(setup):
    plain, model, host, switch, inputs = setup
    merged = model(*inputs)
    assert not torch.equal(merged, plain(*inputs)), "the networks must change the output"
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    assert torch.equal(model(*inputs), merged)


@torch.no_grad()
def test_switching_copies_nothing_from_the_cpu_backups_once_merged(setup):
    _, model, host, switch, inputs = setup
    model(*inputs)
    restores = host.restores
    for _ in range(5):
        with switch.networks_off():
            model(*inputs)
        model(*inputs)
    assert host.restores == restores
    assert switch.switches == 5


@torch.no_grad()
def test_layers_not_merged_yet_take_the_hosts_path_and_stay_exact(setup):
    plain, model, host, switch, inputs = setup
    with switch.networks_off():  # before any LoRA forward: nothing is merged
        assert torch.equal(model(*inputs), plain(*inputs))
    lora_out = model(*inputs)
    reference = copy.deepcopy(model)
    with switch.networks_off():
        assert torch.equal(model(*inputs), plain(*inputs))
    assert torch.equal(model(*inputs), lora_out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


@torch.no_grad()
def test_an_error_inside_restores_networks_weights_and_bookkeeping(setup):
    _, model, host, switch, inputs = setup
    merged = model(*inputs)
    before = state(model)
    names = {n: getattr(layer, "network_current_names", None) for n, layer in host.layers.items()}
    networks = list(host.loaded_networks)
    with pytest.raises(RuntimeError):
        with switch.networks_off():
            model(*inputs)
            raise RuntimeError("interrupted")
    assert host.loaded_networks == networks
    assert {n: getattr(layer, "network_current_names", None) for n, layer in host.layers.items()} == names
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(*inputs), merged)


@torch.no_grad()
def test_held_memory_is_one_copy_of_the_changed_layers(setup):
    _, model, host, switch, inputs = setup
    model(*inputs)
    with switch.networks_off():
        pass
    changed = set(LORA_LAYERS + LOHA_LAYERS + NORM_LAYERS + ["input_blocks.2.transformer_blocks.0.mha"])
    modules = dict(model.named_modules())
    expected = 0
    for name in changed:
        layer = modules[name]
        if isinstance(layer, torch.nn.MultiheadAttention):
            tensors = [layer.network_weights_backup[0], layer.network_weights_backup[1], layer.network_bias_backup]
        else:
            tensors = [layer.network_weights_backup, layer.network_bias_backup]
        expected += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    assert switch.held_bytes() == expected
    switch.release()
    assert switch.held_bytes() == 0


@torch.no_grad()
def test_no_networks_means_nothing_to_switch(setup):
    plain, model, host, switch, inputs = setup
    host.loaded_networks.clear()
    with switch.networks_off():
        out = model(*inputs)
    assert torch.equal(out, plain(*inputs))
    assert switch.switches == 0
