"""Tier 2: how much AutoLoRA may take on a device (each device's own memory query stood in), the path
`auto` chooses from it, and the patcher families' low-VRAM states that make `auto` take the lean path."""
import copy
import types

import pytest
import torch

from lib_autolora.hosts.a1111.networks import NetworkSwitch
from lib_autolora.hosts.layers import layer_off
from lib_autolora.hosts.patcher import hooks as patcher_hooks
from tests.support.a1111_like_lora import LoraHost, load_kohya
from tests.support.kohya_files import write_lora
from tests.support.tiny_unet import LORA_LAYERS, make_tiny_unet

GIB = 2**30


def test_cuda_budget_is_the_drivers_free_memory_plus_what_the_allocator_keeps_unused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * GIB, 24 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * GIB)
    assert layer_off.device_budget(torch.device("cuda", 0)) == 4 * GIB


def test_mps_budget_is_the_recommended_working_set_minus_what_metal_allocated(monkeypatch):
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 16 * GIB, raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 10 * GIB, raising=False)
    assert layer_off.device_budget(torch.device("mps")) == 6 * GIB
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 17 * GIB, raising=False)
    assert layer_off.device_budget(torch.device("mps")) == 0, "past the working set nothing is left"


def test_xpu_budget_where_torch_has_its_query_and_none_where_it_has_not(monkeypatch):
    monkeypatch.setattr(torch.xpu, "mem_get_info", lambda device: (2 * GIB, 16 * GIB), raising=False)
    monkeypatch.setattr(torch.xpu, "memory_reserved", lambda device: 1 * GIB, raising=False)
    monkeypatch.setattr(torch.xpu, "memory_allocated", lambda device: 1 * GIB, raising=False)
    assert layer_off.device_budget(torch.device("xpu", 0)) == 2 * GIB
    monkeypatch.delattr(torch.xpu, "mem_get_info")
    assert layer_off.device_budget(torch.device("xpu", 0)) is None


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_other_devices_give_no_budget(device):
    assert layer_off.device_budget(torch.device(device)) is None


def _switch_with_costly_copies(tmp_path, mode="auto"):
    """A1111's switch on the tiny UNet whose backups are float64 (a copy on the model's device costs memory);
    returns the switch after one base pass, and the bytes the copies would take."""
    plain = make_tiny_unet()
    model = copy.deepcopy(plain)
    host = LoraHost(model, backup_dtype=torch.float64)
    host.loaded_networks.append(load_kohya(write_lora(tmp_path / "a.safetensors", plain, LORA_LAYERS), "a"))
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([3.0]), torch.randn(1, 5, 24))
    switch = NetworkSwitch(host.loaded_networks, host.layers.values(), mode)
    with torch.no_grad():
        model(*inputs)
        with switch.networks_off():
            model(*inputs)
    needed = sum(off.copy_bytes() for off in switch.layers.ways)
    return switch, needed


@pytest.mark.parametrize("budget_in_copies, path", [(None, "lean"), (1.9, "lean"), (2.0, "fast"), (10.0, "fast")])
def test_auto_takes_copies_only_where_they_take_at_most_half_the_budget(tmp_path, monkeypatch, budget_in_copies, path):
    _, needed = _switch_with_costly_copies(tmp_path)
    budget = None if budget_in_copies is None else int(budget_in_copies * needed)
    monkeypatch.setattr(layer_off, "device_budget", lambda device: budget)
    switch, _ = _switch_with_costly_copies(tmp_path)
    assert switch.layers.path == path
    offs = switch.layers.ways
    assert switch.held_bytes() == (needed if path == "fast" else sum(off.term.held_bytes() for off in offs))


def test_release_held_drops_copies_and_factors_and_the_next_pass_makes_them_again(tmp_path):
    switch, needed = _switch_with_costly_copies(tmp_path, "fast")
    assert switch.held_bytes() == needed > 0
    switch.release_held()
    assert switch.held_bytes() == 0
    assert switch.describe().startswith("fast path (copies of"), "the layers keep their ways"


def _memory_manager(state=None, loaded=()):
    return types.SimpleNamespace(vram_state=None if state is None else types.SimpleNamespace(name=state),
                                 current_loaded_models=list(loaded))


@pytest.mark.parametrize("state, offloads", [("NORMAL_VRAM", False), ("HIGH_VRAM", False), ("DISABLED", False),
                                             ("SHARED", False), ("LOW_VRAM", True), ("NO_VRAM", True)])
def test_the_patcher_families_low_vram_states_count_as_offloading(state, offloads):
    unet = types.SimpleNamespace(model=object())
    assert patcher_hooks.offloading(_memory_manager(state), unet) is offloads


def test_forges_cpu_swap_and_comfys_partial_load_count_as_offloading():
    model = types.SimpleNamespace()
    unet, clone = types.SimpleNamespace(model=model), types.SimpleNamespace(model=model)  # a clone shares the model
    swapped = types.SimpleNamespace(model=clone, model_accelerated=True)  # Forge's LoadedModel after a CPU swap
    assert patcher_hooks.offloading(_memory_manager("NORMAL_VRAM", [swapped]), unet)
    other = types.SimpleNamespace(model=types.SimpleNamespace(model=object()), model_accelerated=True)
    assert not patcher_hooks.offloading(_memory_manager("NORMAL_VRAM", [other]), unet), "another model's swap"
    model.model_lowvram = True  # ComfyUI's partial load (reForge)
    assert patcher_hooks.offloading(_memory_manager("NORMAL_VRAM"), unet)
