"""Switching Forge's LoRA patches off for the base pass of a step, and back on.

Forge's LoraLoader (one per model, shared by every patcher clone) merges the patches into new
weight Parameters and keeps the originals in `backup` (key -> original, on the offload device);
patches in "online" mode sit in `forge_online_loras` on their layers and are applied at each
forward. The switch itself is `WeightSwitch`; duck-typed on those attributes, this imports
nothing from the WebUI.
"""
from lib_autolora.hosts.weight_switch import ABSENT, WeightSwitch


class ForgeLoraSwitch(WeightSwitch):
    """`model`: the patcher's model, which owns `lora_loader`."""

    def originals(self):
        return self.model.lora_loader.backup

    def online_patches(self):
        layers = dict.fromkeys(layer for layer in self.model.lora_loader.online_backup
                               if hasattr(layer, "forge_online_loras"))
        return [(layer, "forge_online_loras", ABSENT) for layer in layers]
