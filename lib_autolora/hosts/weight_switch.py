"""Switching a UNet patcher's LoRA off for the base pass of a step, and back on: what Forge and the
ldm_patched family share.

Both patchers merge LoRA into the weights and keep each original in a backup (key -> original, on
the offload device), and both can instead apply patches at each forward on some layers (Forge's
online LoRA, ldm_patched's low-VRAM patches). Switching off takes the per-forward patches off their
layers and lets each merged layer compute without its patches in one of the ways of `layer_off`: a
copy of its original (the very backup tensor where it already lives on the layer's device), the
original streamed per call, or the merged output minus the patches' low-rank term where the
subclass can read the patches' factors. No weight is written, so both states are exact, and a switch
is a loop of attribute assignments. The originals always come from the backup, never from the
model's Parameter: a patcher that updates weights in place has overwritten that Parameter's data.

Host-free: a subclass says where its host keeps the backup, the per-forward patches and the factors.
"""
import contextlib
from typing import Any

from lib_autolora.hosts.layer_off import LowRankTerm, OffLayer, OffSwitch, get_slot, low_rank_part


class WeightSwitch(OffSwitch):
    def __init__(self, model, mode="auto"):
        super().__init__(mode)
        self.model = model  # the torch module the backup's keys are relative to
        self._offs, self._source = [], None  # the OffLayers and the backup entries they were made for
        self.online_off = 0  # the most per-forward patches one switch took off (for the console)

    def originals(self):
        """{parameter key: original tensor} for every weight merged now."""
        raise NotImplementedError

    def online_patches(self):
        """[(object, attribute, its value with the networks off or recorder.ABSENT)]: the per-forward patches."""
        raise NotImplementedError

    def merged_state(self):
        """What identifies the patches merged now where the backup alone does not (it can keep the same
        tensors when the host merges other strengths), or None."""
        return None

    def low_rank_factors(self, key):
        """[(up, down, alpha, mid, strength)] of the patches merged into weight `key`, or None where one of
        them is not a plain LoRA patch or the patches are not known to be the merged ones."""
        return None

    def release(self):
        super().release()
        self._offs, self._source = [], None

    def describe(self):
        merged = super().describe()
        if not self.online_off:
            return merged
        online = f"on-the-fly LoRA taken off {self.online_off} layers"
        return f"{merged}, {online}" if merged else online

    def merged_everywhere(self):
        """Whether every patch is merged into the weights (none is applied at each forward)."""
        return not self.online_patches()

    def _low_rank_term(self, layer, key):
        factors = self.low_rank_factors(key)
        if not factors:
            return None
        weight = get_slot(layer, "weight")
        parts = []
        for up, down, alpha, mid, strength in factors:
            scale = strength * (alpha / down.shape[0] if alpha is not None else 1.0)
            part = low_rank_part(layer, weight, down, up, mid, scale)
            if part is None:
                return None
            parts.append(part)
        return LowRankTerm(layer, parts)

    def _off_layers(self, originals):
        """One OffLayer per merged layer, made again when the backup holds other tensors or other patches
        were merged (LoRA Block Weight merges new strengths mid-sampling)."""
        source = (self.merged_state(), [(key, id(original)) for key, original in originals.items()])
        if source == self._source:
            return self._offs
        fields: dict[str, list[tuple[str, Any, str]]] = {}  # layer path -> (name, original, key)
        for key, original in originals.items():
            path, _, name = key.rpartition(".")
            fields.setdefault(path, []).append((name, original, key))
        self.layers.release()
        self._offs = []
        for path, entries in fields.items():
            layer = self.model.get_submodule(path) if path else self.model
            weight_only = [name for name, _, _ in entries] == ["weight"]
            term = self._low_rank_term(layer, entries[0][2]) if weight_only else None
            self._offs.append(OffLayer(layer, [(layer, name, original) for name, original, _ in entries], term,
                                       self.layers))
        self._source = source
        return self._offs

    @contextlib.contextmanager
    def networks_off(self, exact=False, batch_rows=None):
        """The model without the patches; `exact` for calls that must equal it bit for bit. With
        `batch_rows` only the rows after the first `batch_rows` of each layer's input go without them
        (a batched call; every patch must be merged)."""
        originals, online = self.originals(), self.online_patches()
        if not originals and not online:
            yield
            return

        def online_off(recorder):
            for obj, name, value in online:
                recorder.set_attr(obj, name, value)
            self.online_off = max(self.online_off, len(online))

        with self.switched_off(lambda: self._off_layers(originals), exact, batch_rows, online_off):
            yield
