"""Switching A1111's built-in Lora networks off for the base pass of a step, and back on.

A1111 merges the active networks into each layer's weights lazily, keeping CPU backups of the
originals (`network_weights_backup`, `network_bias_backup`) and remembering the merged set in
`network_current_names`. Emptying `loaded_networks` alone would make every layer restore its
backup from CPU on each switch and re-merge on the next; instead the layers that hold the merged
set get device copies of their backups swapped in, and their bookkeeping says "no networks", so
A1111 sees nothing to do. One switch is then a loop of attribute assignments, exact for every
network type (whatever the type computes ends up in the layer's weight and bias), and it holds one
extra copy of the layers the networks change.

Layers that do not hold the merged set yet are left to A1111's own path, which is exact too.
This module is duck-typed on those attributes and imports nothing from the WebUI.
"""
import contextlib
import time

import torch


def network_names(networks):
    """The value A1111 stores in `network_current_names` for a list of loaded networks."""
    return tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in networks)


def _changes_layer(networks, layer_name):
    suffixes = ("", "_q_proj")  # MultiheadAttention layers take their networks as q/k/v/out parts
    return any(layer_name + s in net.modules for net in networks for s in suffixes)


# A switch touches every layer that holds the networks, twice: the direct reads and writes below
# skip nn.Module's __getattr__/__setattr__ checks (parameter slots stay parameter slots, the
# bookkeeping is a plain attribute), which were most of its cost.

def _get(owner, name):
    return owner._parameters[name] if name in owner._parameters else getattr(owner, name)


def _put(owner, name, value):
    if name in owner._parameters:
        owner._parameters[name] = value
    else:
        setattr(owner, name, value)


def _set_names(layer, names):
    layer.__dict__["network_current_names"] = names


def _as_base(value, like):
    if value is None:
        return None
    device = like.device if like is not None else value.device
    return torch.nn.Parameter(value.to(device=device, copy=True), requires_grad=False)


def _base_fields(layer):
    """[(owner, attribute, original value)] of a layer the networks change, from A1111's backups."""
    weights = getattr(layer, "network_weights_backup", None)
    bias = getattr(layer, "network_bias_backup", None)
    if hasattr(layer, "in_proj_weight"):  # MultiheadAttention
        in_proj, out_proj = weights
        return [(layer, "in_proj_weight", _as_base(in_proj, layer.in_proj_weight)),
                (layer.out_proj, "weight", _as_base(out_proj, layer.out_proj.weight)),
                (layer.out_proj, "bias", _as_base(bias, layer.out_proj.bias))]
    fields = [(layer, "weight", _as_base(weights, layer.weight))]
    if bias is not None or getattr(layer, "bias", None) is not None:
        fields.append((layer, "bias", _as_base(bias, layer.bias)))
    return fields


class NetworkSwitch:
    """Turns the prompt's networks off inside `networks_off()` and restores them after."""

    def __init__(self, loaded_networks, layers):
        self._loaded = loaded_networks  # the Lora extension's own list, emptied in place while off
        # A1111 names every module; only those with weights take networks
        self._layers = [layer for layer in layers if hasattr(layer, "network_layer_name")
                        and (hasattr(layer, "weight") or hasattr(layer, "in_proj_weight"))]
        self._base = {}  # layer -> its _base_fields, made on first use, held for the generation
        self.switches = 0
        self.switch_seconds = 0.0  # time spent switching off and on, not in the model

    def held_bytes(self):
        """Memory held by the original copies of the changed layers."""
        return sum(value.numel() * value.element_size()
                   for fields in self._base.values() for _, _, value in fields if value is not None)

    def release(self):
        self._base.clear()

    def _fields(self, layer, networks):
        if layer not in self._base:
            changed = _changes_layer(networks, layer.network_layer_name)
            has_backup = getattr(layer, "network_weights_backup", None) is not None
            self._base[layer] = _base_fields(layer) if changed and has_backup else []
        return self._base[layer]

    @contextlib.contextmanager
    def networks_off(self):
        networks = list(self._loaded)
        if not networks:
            yield
            return
        wanted = network_names(networks)
        swapped = []
        started = time.perf_counter()
        try:
            for layer in self._layers:
                if layer.__dict__.get("network_current_names", ()) != wanted:
                    continue
                fields = self._fields(layer, networks)
                swapped.append((layer, [(owner, name, _get(owner, name)) for owner, name, _ in fields]))
                for owner, name, value in fields:
                    _put(owner, name, value)
                _set_names(layer, ())
            self._loaded.clear()
            self.switches += 1
            self.switch_seconds += time.perf_counter() - started
            yield
        finally:
            started = time.perf_counter()
            self._loaded[:] = networks
            for layer, merged in swapped:
                for owner, name, value in merged:
                    _put(owner, name, value)
                _set_names(layer, wanted)
            self.switch_seconds += time.perf_counter() - started
