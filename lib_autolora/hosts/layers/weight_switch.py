"""Switching a UNet patcher's LoRA off for the base pass of a step, and back on: what Forge and the
reForge family share.

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
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from lib_autolora.core.recorder import Recorder
from lib_autolora.hosts.layers.layer_off import LowRankPart, LowRankTerm, OffLayer, OffSwitch, get_slot, low_rank_part

OnlinePatch = tuple[Any, str, Any]  # (object, attribute, its value with the networks off or recorder.ABSENT)
# (up, down, alpha, mid, strength) of one plain LoRA patch
Factors = tuple[torch.Tensor, torch.Tensor, 'float | None', 'torch.Tensor | None', float]


class WeightSwitch(OffSwitch):
    def __init__(self, model: Any, mode: str = "auto") -> None:
        super().__init__(mode)
        self.model = model  # the torch module the backup's keys are relative to
        self._offs: list[OffLayer] = []  # the OffLayers, and the backup entries they were made for
        self._source: tuple[object, list[tuple[str, int]]] | None = None
        self.online_off = 0  # the most per-forward patches one switch took off (for the console)

    def originals(self) -> dict[str, torch.Tensor]:
        """{parameter key: original tensor} for every weight merged now."""
        raise NotImplementedError

    def online_patches(self) -> list[OnlinePatch]:
        """The patches applied at each forward, as the recorder takes them off."""
        raise NotImplementedError

    def merged_state(self) -> object:
        """What identifies the patches merged now where the backup alone does not (it can keep the same
        tensors when the host merges other strengths), or None."""
        return None

    def low_rank_factors(self, key: str) -> list[Factors] | None:
        """[(up, down, alpha, mid, strength)] of the patches merged into weight `key`, or None where one of
        them is not a plain LoRA patch or the patches are not known to be the merged ones."""
        return None

    def release(self) -> None:
        super().release()
        self._offs, self._source = [], None

    def describe(self) -> str:
        merged = super().describe()
        if not self.online_off:
            return merged
        online = f"on-the-fly LoRA taken off {self.online_off} layers"
        return f"{merged}, {online}" if merged else online

    def merged_everywhere(self) -> bool:
        """Whether every patch is merged into the weights (none is applied at each forward)."""
        return not self.online_patches()

    def _low_rank_term(self, layer: torch.nn.Module, key: str) -> LowRankTerm | None:
        factors = self.low_rank_factors(key)
        if not factors:
            return None
        weight = get_slot(layer, "weight")
        parts: list[LowRankPart] = []
        for up, down, alpha, mid, strength in factors:
            scale = strength * (alpha / down.shape[0] if alpha is not None else 1.0)
            part = low_rank_part(layer, weight, down, up, mid, scale)
            if part is None:
                return None
            parts.append(part)
        return LowRankTerm(layer, parts)

    def _off_layers(self, originals: dict[str, torch.Tensor]) -> list[OffLayer]:
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
    def networks_off(self, exact: bool = False, batch_rows: int | None = None) -> Iterator[None]:
        """The model without the patches; `exact` for calls that must equal it bit for bit. With
        `batch_rows` only the rows after the first `batch_rows` of each layer's input go without them
        (a batched call; every patch must be merged)."""
        originals, online = self.originals(), self.online_patches()
        if not originals and not online:
            yield
            return

        def online_off(recorder: Recorder) -> None:
            for obj, name, value in online:
                recorder.set_attr(obj, name, value)
            self.online_off = max(self.online_off, len(online))

        with self.switched_off(lambda: self._off_layers(originals), exact, batch_rows, online_off):
            yield
