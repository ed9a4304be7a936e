"""Switching Forge's LoRA patches off for the base pass of a step, and back on.

Forge's LoraLoader (one per model, shared by every patcher clone) merges the patches into new
weight Parameters and keeps the originals in `backup` (key -> original, on the offload device; on
CPU the very original Parameter); patches in "online" mode sit in `forge_online_loras` on their
layers and are applied at each forward. The low-rank terms come from the patcher's own
`lora_patches` ("lora" patches: up, down, alpha, mid), used only while the loader's `loaded_hash`
says they are the ones it merged. The switch itself is `WeightSwitch`; duck-typed on those
attributes, this imports nothing from the WebUI.
"""
from __future__ import annotations

from typing import Any

from lib_autolora.core.recorder import ABSENT
from lib_autolora.hosts.layers.weight_switch import Factors, OnlinePatch, WeightSwitch


def _lora_factors(patch: tuple[Any, ...]) -> Factors | None:
    """(up, down, alpha, mid, strength) of a plain "lora" patch; None for LoHa, LoKr, GLoRA, diff, DoRA,
    an offset into a fused weight, a weight function or a model strength other than 1."""
    strength, value, strength_model, offset, function = patch[:5]
    if strength_model != 1.0 or offset is not None or function is not None:
        return None
    if not isinstance(value, tuple) or len(value) != 2 or value[0] != "lora":
        return None
    up, down, alpha, mid, dora_scale = value[1][:5]
    return None if dora_scale is not None else (up, down, alpha, mid, strength)


class ForgeLoraSwitch(WeightSwitch):
    def __init__(self, model: Any, lora_patches: dict[tuple[Any, ...], dict[str, list[Any]]] | None = None,
                 mode: str = "auto") -> None:
        """`model`: the patcher's model, which owns `lora_loader`; `lora_patches`: the patcher's
        {(file, strength, model strength, online): {key: patches}}."""
        super().__init__(model, mode)
        self._patches = lora_patches or {}

    def originals(self) -> dict[str, Any]:
        return self.model.lora_loader.backup

    def online_patches(self) -> list[OnlinePatch]:
        layers = dict.fromkeys(layer for layer in self.model.lora_loader.online_backup
                               if hasattr(layer, "forge_online_loras"))
        return [(layer, "forge_online_loras", ABSENT) for layer in layers]

    def merged_state(self) -> object:
        return self.model.lora_loader.loaded_hash

    def low_rank_factors(self, key: str) -> list[Factors] | None:
        if str(list(self._patches.keys())) != self.merged_state():
            return None
        factors = []
        for (_, _, _, online_mode), patches in self._patches.items():
            for patch in [] if online_mode else patches.get(key, []):
                found = _lora_factors(patch)
                if found is None:
                    return None
                factors.append(found)
        return factors
