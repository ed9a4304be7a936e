"""Switching Forge's LoRA patches off for the base pass of a step, and back on.

Forge's LoraLoader (one per model, shared by every patcher clone) merges the patches into new
weight Parameters and keeps the originals in `backup` (key -> original, on the offload device; on
CPU the very original Parameter); patches in "online" mode sit in `forge_online_loras` on their
layers and are applied at each forward. Switching off takes the online patches off their layers
and lets each merged layer compute without its patches in one of the ways of `layer_off`: a copy of
its original, the original streamed per call, or the merged output minus the patches' low-rank
term, read from the patcher's own `lora_patches` ("lora" patches: up, down, alpha, mid). No weight
is written, so both states are exact, and a switch is a loop of attribute assignments.

Duck-typed on those attributes: imports nothing from the WebUI.
"""
import contextlib
import functools
import time

from lib_autolora.hosts.layer_off import LayerSwitch, LowRankTerm, OffLayer, get_slot, low_rank_part


def _lora_part(layer, weight, patch):
    """One patch as a low-rank part, or None where it is not a plain "lora" patch (LoHa, LoKr, GLoRA,
    diff, DoRA, an offset into a fused weight, a weight function or a model strength other than 1)."""
    strength, value, strength_model, offset, function = patch[:5]
    if strength_model != 1.0 or offset is not None or function is not None:
        return None
    if not isinstance(value, tuple) or len(value) != 2 or value[0] != "lora":
        return None
    up, down, alpha, mid, dora_scale = value[1][:5]
    if dora_scale is not None:
        return None
    scale = strength * (alpha / down.shape[0] if alpha is not None else 1.0)
    return low_rank_part(layer, weight, down, up, mid, scale)


def _low_rank_term(layer, key, lora_patches):
    """The merged patches' term on the layer whose weight is `key`, or None where one is not low-rank."""
    weight = get_slot(layer, "weight")
    parts = []
    for (_, _, _, online_mode), patches in lora_patches.items():
        for patch in [] if online_mode else patches.get(key, []):
            part = _lora_part(layer, weight, patch)
            if part is None:
                return None
            parts.append(part)
    return LowRankTerm(layer, parts) if parts else None


class ForgeLoraSwitch:
    def __init__(self, model, lora_patches=None, mode="auto"):
        self.model = model  # the patcher's model, which owns `lora_loader`
        self._patches = lora_patches or {}  # the patcher's {(file, strength, model strength, online): {key: patches}}
        self.ways = LayerSwitch(mode)
        self._offs, self._backup = [], None  # the OffLayers of the loader's `backup` they were made for
        self.switches = 0
        self.switch_seconds = 0.0

    def held_bytes(self):
        """Memory held: copies of originals (none where they already live on the layer's device) and factors."""
        return self.ways.held_bytes()

    def changed_bytes(self):
        return self.ways.changed_bytes()

    def describe(self):
        return self.ways.describe()

    def release(self):
        self.ways.release()
        self._offs, self._backup = [], None

    def _off_layers(self, loader):
        """One OffLayer per merged layer; terms only where the patches are the ones the loader merged."""
        if loader.backup is self._backup:
            return self._offs
        patches = self._patches if str(list(self._patches.keys())) == loader.loaded_hash else {}
        fields = {}
        for key, original in loader.backup.items():
            path, _, name = key.rpartition(".")
            fields.setdefault(path, []).append((name, original, key))
        self._offs = []
        for path, entries in fields.items():
            layer = functools.reduce(getattr, path.split("."), self.model)
            weight_only = [name for name, _, _ in entries] == ["weight"]
            term = _low_rank_term(layer, entries[0][2], patches) if weight_only else None
            self._offs.append(OffLayer(layer, [(layer, name, original) for name, original, _ in entries], term,
                                       self.ways))
        self._backup = loader.backup
        return self._offs

    def _online_layers(self, loader):
        return list(dict.fromkeys(layer for layer in loader.online_backup if hasattr(layer, "forge_online_loras")))

    def merged_everywhere(self):
        """Whether every patch is merged into the weights (online patches are applied at each forward)."""
        return not self._online_layers(self.model.lora_loader)

    @contextlib.contextmanager
    def networks_off(self, exact=False, batch_rows=None):
        """The model without the patches; `exact` for calls that must equal it bit for bit. With
        `batch_rows` only the rows after the first `batch_rows` of each layer's input go without them
        (a batched call; every patch must be merged)."""
        loader = self.model.lora_loader
        online_layers = self._online_layers(loader)
        if not loader.backup and not online_layers:
            yield
            return
        started = time.perf_counter()
        offs = self._off_layers(loader)
        self.ways.decide(offs)
        undo, online = [], []
        try:
            self.ways.base_rows = None if batch_rows is None else slice(batch_rows, 2 * batch_rows)
            for off in offs:
                undo.append(self.ways.turn_off(off, exact))
            for layer in online_layers:
                online.append((layer, layer.forge_online_loras))
                del layer.forge_online_loras
            self.switches += 1
            self.switch_seconds += time.perf_counter() - started
            yield
        finally:
            started = time.perf_counter()
            self.ways.base_rows = None
            for entry in undo:
                self.ways.turn_on(entry)
            for layer, patches in online:
                layer.forge_online_loras = patches
            self.switch_seconds += time.perf_counter() - started
