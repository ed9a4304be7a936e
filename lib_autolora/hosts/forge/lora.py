"""Switching Forge's LoRA patches off for the base pass of a step, and back on.

Forge's LoraLoader (one per model, shared by every patcher clone) merges the patches into new
weight Parameters and keeps the originals in `backup` (key -> original, on the offload device);
patches in "online" mode sit in `forge_online_loras` on their layers and are applied at each
forward. Switching off puts the originals (copied to the weight's device once per generation,
or the very same tensors when they already live there) back in place of the merged weights and
takes the online patches off their layers; switching on puts everything back. No weight is
written, so both states are exact, and a switch is a loop of attribute assignments.

Duck-typed on those attributes, with the host's attribute helpers passed in: imports nothing
from the WebUI.
"""
import contextlib
import time

import torch


class ForgeLoraSwitch:
    def __init__(self, model, get_attr, set_attr):
        self.model = model  # the patcher's model, which owns `lora_loader`
        self._get_attr, self._set_attr = get_attr, set_attr
        self._base = {}  # key -> original weight on the merged weight's device
        self.switches = 0
        self.switch_seconds = 0.0

    def held_bytes(self):
        """Memory held by copies of originals (none where the originals already live on that device)."""
        backup = self.model.lora_loader.backup
        return sum(v.numel() * v.element_size() for k, v in self._base.items() if v is not backup.get(k))

    def release(self):
        self._base.clear()

    def _original(self, key, original, merged):
        base = self._base.get(key)
        if base is None:
            if original.device == merged.device and original.dtype == merged.dtype:
                base = original
            else:
                base = torch.nn.Parameter(original.to(device=merged.device, dtype=merged.dtype), requires_grad=False)
            self._base[key] = base
        return base

    @contextlib.contextmanager
    def networks_off(self):
        loader = self.model.lora_loader
        online_layers = list(dict.fromkeys(layer for layer in loader.online_backup
                                           if hasattr(layer, "forge_online_loras")))
        if not loader.backup and not online_layers:
            yield
            return
        started = time.perf_counter()
        merged, online = [], []
        try:
            for key, original in loader.backup.items():
                weight = self._get_attr(self.model, key)
                merged.append((key, weight))
                self._set_attr(self.model, key, self._original(key, original, weight))
            for layer in online_layers:
                online.append((layer, layer.forge_online_loras))
                del layer.forge_online_loras
            self.switches += 1
            self.switch_seconds += time.perf_counter() - started
            yield
        finally:
            started = time.perf_counter()
            for key, weight in merged:
                self._set_attr(self.model, key, weight)
            for layer, patches in online:
                layer.forge_online_loras = patches
            self.switch_seconds += time.perf_counter() - started
