"""Switching A1111's built-in Lora networks off for the base pass of a step, and back on.

A1111 merges the active networks into each layer's weights lazily, keeping CPU backups of the
originals (`network_weights_backup`, `network_bias_backup`) and remembering the merged set in
`network_current_names`. Emptying `loaded_networks` alone would make every layer restore its
backup from CPU on each switch and re-merge on the next; instead each layer that holds the merged
set computes without the networks in one of the ways of `layer_off` (a copy of its backup, its
backup streamed per call, or the merged output minus the networks' low-rank term, from the host's
own LoRA modules), and its bookkeeping says "no networks", so A1111 sees nothing to do. No weight
is written. On CPU the backups live on the model's device, so a copy is the backup itself.

Layers that do not hold the merged set yet are left to A1111's own path, which is exact too; so
are layers in `lora_functional` mode, where the networks are added in the forward and emptying
`loaded_networks` is all it takes. This module is duck-typed on those attributes and imports
nothing from the WebUI.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lib_autolora.core.recorder import Recorder
from lib_autolora.hosts.layers.layer_off import (
    LowRankPart,
    LowRankTerm,
    OffLayer,
    OffSwitch,
    Slot,
    get_slot,
    low_rank_part,
)
from lib_autolora.webui.host_objects import Network

Names = tuple[tuple[Any, ...], ...]  # the value of a layer's network_current_names


def network_names(networks: Sequence[Network]) -> Names:
    """The value A1111 stores in `network_current_names` for a list of loaded networks."""
    return tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in networks)


def _identities(names: Names) -> list[tuple[Any, Any]]:
    """The networks of `network_names`' value without their weights (name and dynamic dim)."""
    return [(name, dyn_dim) for name, _, _, dyn_dim in names]


def _changes_layer(networks: Sequence[Network], layer_name: str) -> bool:
    suffixes = ("", "_q_proj")  # MultiheadAttention layers take their networks as q/k/v/out parts
    return any(layer_name + s in net.modules for net in networks for s in suffixes)


def _base_fields(layer: Any) -> list[Slot]:
    """[(owner, attribute, original)] of a layer the networks change, from A1111's backups."""
    weights = getattr(layer, "network_weights_backup", None)
    bias = getattr(layer, "network_bias_backup", None)
    if hasattr(layer, "in_proj_weight"):  # MultiheadAttention
        assert weights is not None, "A1111 backs up the weights of every layer the networks change"
        in_proj, out_proj = weights
        return [(layer, "in_proj_weight", in_proj), (layer.out_proj, "weight", out_proj),
                (layer.out_proj, "bias", bias)]
    fields = [(layer, "weight", weights)]
    if bias is not None or getattr(layer, "bias", None) is not None:
        fields.append((layer, "bias", bias))
    return fields


def _is_plain_lora(module: Any, network: Network) -> bool:
    """A LoRA/LoCon module whose whole update is up @ (mid) @ down times its scale (NetworkModuleLora
    without DoRA, a bias or a dyn_dim cut)."""
    return (hasattr(module, "up_model") and hasattr(module, "down_model") and network.dyn_dim is None
            and getattr(module, "dora_scale", None) is None and getattr(module, "bias", None) is None)


def _low_rank_term(layer: Any, networks: Sequence[Network]) -> LowRankTerm | None:
    """The networks' term on `layer` from their own modules, or None where one of them is not low-rank
    (LoHa, LoKr, OFT, full, norm, ...), the layer is a MultiheadAttention or stores fp8 weights."""
    if "weight" not in layer._parameters or getattr(layer, "fp16_weight", None) is not None:
        return None
    weight = get_slot(layer, "weight")
    parts: list[LowRankPart] = []
    for net in networks:
        module = net.modules.get(layer.network_layer_name)
        if module is None:
            continue
        if not _is_plain_lora(module, net):
            return None
        mid = None if getattr(module, "mid_model", None) is None else module.mid_model.weight
        part = low_rank_part(layer, weight, module.down_model.weight, module.up_model.weight, mid,
                             module.multiplier() * module.calc_scale())
        if part is None:
            return None
        parts.append(part)
    return LowRankTerm(layer, parts) if parts else None


class NetworkSwitch(OffSwitch):
    """Turns the prompt's networks off inside `networks_off()` and restores them after."""

    def __init__(self, loaded_networks: list[Network], layers: Iterable[Any], mode: str = "auto") -> None:
        super().__init__(mode)
        self._loaded = loaded_networks  # the Lora extension's own list, emptied in place while off
        # A1111 names every module; only those with weights take networks
        self._layers = [layer for layer in layers if hasattr(layer, "network_layer_name")
                        and (hasattr(layer, "weight") or hasattr(layer, "in_proj_weight"))]
        self._off: dict[Any, OffLayer | None] = {}  # layer -> its OffLayer, or None where the networks change nothing
        self._off_for: Names | None = None  # the network names (with their weights) the OffLayers were made for
        self._changed: list[Any] = []  # the layers the networks change
        self._changed_for: Names | None = None  # and for which names

    def release(self) -> None:
        super().release()
        self._off.clear()
        self._off_for = None

    def _follow(self, networks: Sequence[Network], wanted: Names) -> None:
        """Where the networks' weights changed since the layers' ways were made (mid-sampling: LoRA Block
        Weight's start/stop steps, Regional Prompter's regions), makes the low-rank terms anew, which hold
        the weight they were made with (copies do not); where other networks came, makes everything anew."""
        if self._off_for == wanted:
            return
        if self._off_for is not None and _identities(self._off_for) == _identities(wanted):
            for layer, off in self._off.items():
                if off is not None and off.term is not None:
                    off.term.release()
                    off.term = _low_rank_term(layer, networks)
        else:
            self.layers.release()
            self._off.clear()
        self._off_for = wanted

    def _off_layer(self, layer: Any, networks: Sequence[Network]) -> OffLayer | None:
        if layer not in self._off:
            changed = _changes_layer(networks, layer.network_layer_name)
            has_backup = getattr(layer, "network_weights_backup", None) is not None
            self._off[layer] = OffLayer(layer, _base_fields(layer), _low_rank_term(layer, networks), self.layers) \
                if changed and has_backup else None
        return self._off[layer]

    def merged_everywhere(self) -> bool:
        """Whether every layer the networks change that A1111 has merged into holds them now (not so in
        lora_functional mode, where the host restores and resets the layers at each forward, nor before a
        layer's first forward with them, nor while another set is merged)."""
        networks = list(self._loaded)
        wanted = network_names(networks)
        if self._changed_for != wanted:
            self._changed = [layer for layer in self._layers if _changes_layer(networks, layer.network_layer_name)]
            self._changed_for = wanted
        return all(layer.__dict__.get("network_current_names", ()) == wanted for layer in self._changed
                   if getattr(layer, "network_weights_backup", None) is not None)

    @contextlib.contextmanager
    def networks_off(self, exact: bool = False, batch_rows: int | None = None) -> Iterator[None]:
        """The model without the networks; `exact` for calls that must equal it bit for bit. With
        `batch_rows` only the rows after the first `batch_rows` of each layer's input go without them (a
        batched call; every changed layer must hold the networks merged), and the host's list stays."""
        networks = list(self._loaded)
        if not networks:
            yield
            return
        wanted = network_names(networks)
        merged: list[Any] = []  # the layers that hold the networks merged now

        def off_layers() -> list[OffLayer]:
            self._follow(networks, wanted)
            merged[:] = [layer for layer in self._layers if layer.__dict__.get("network_current_names", ()) == wanted]
            return [off for off in (self._off_layer(layer, networks) for layer in merged) if off is not None]

        def bookkeeping_off(recorder: Recorder) -> None:
            """A1111 sees no networks: none loaded, none merged, so it has nothing to restore or merge."""
            if batch_rows is not None:
                return
            for layer in merged:
                recorder.set_attr(layer, "network_current_names", ())
            recorder.set_list(self._loaded, [])

        with self.switched_off(off_layers, exact, batch_rows, bookkeeping_off):
            yield
