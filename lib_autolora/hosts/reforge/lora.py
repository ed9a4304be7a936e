"""Switching the LoRA patches of an ldm_patched ModelPatcher off for the base pass of a step, and
back on.

The patcher merges its patches into the weights when it loads the model and keeps each original in
`backup` (key -> original; reForge: a (weight, inplace_update) pair, Forge Classic: the tensor).
With `inplace_update` the merged values were copied into the model's own Parameter, so the
original lives only in the backup. In reForge's low-VRAM mode the modules left on the offload
device are not merged: a `LowVramPatch` in their `weight_function`/`bias_function` list applies the
patch at each forward. The switch itself is `WeightSwitch`; this imports nothing from the WebUI.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lib_autolora.hosts.layers.weight_switch import OnlinePatch, WeightSwitch

FUNCTION_LISTS = ("weight_function", "bias_function")  # a module's per-forward weight and bias functions


class ReforgeLoraSwitch(WeightSwitch):
    def __init__(self, current_patcher: Callable[[], Any], patch_type: type | None = None, mode: str = "auto") -> None:
        """`current_patcher()`: the patcher whose weights are loaded now, asked at each switch (in Forge
        Classic every clone keeps its own backup, filled when that clone loads). `patch_type`: the
        host's per-forward patch class (LowVramPatch), None where it has none. No low-rank terms here:
        the lean path takes copies where they fit, else streams the originals."""
        super().__init__(current_patcher().model, mode)
        self.current_patcher = current_patcher
        self.patch_type = patch_type

    def originals(self) -> dict[str, Any]:
        backup = self.current_patcher().backup
        # a backup entry is the host's namedtuple holding the weight, or the tensor itself
        return {key: entry.weight if isinstance(entry, tuple) else entry  # type: ignore[attr-defined]
                for key, entry in backup.items()}

    def online_patches(self) -> list[OnlinePatch]:
        if self.patch_type is None:
            return []
        found = []
        for module in self.model.modules():
            for name in FUNCTION_LISTS:
                functions = module.__dict__.get(name)
                if functions and any(isinstance(f, self.patch_type) for f in functions):
                    found.append((module, name, [f for f in functions if not isinstance(f, self.patch_type)]))
        return found
