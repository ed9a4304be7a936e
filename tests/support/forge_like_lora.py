"""A stand-in for Forge's LoraLoader, written from its documented behaviour: merged weights are
new Parameters set on the model, the originals kept in `backup` (key -> tensor on the offload
device); "online" patches sit in `forge_online_loras` on their layers and are added at forward."""
import torch
import torch.nn.functional as F


def get_attr(obj, key):
    for name in key.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj, key, value):
    *path, leaf = key.split(".")
    setattr(get_attr(obj, ".".join(path)) if path else obj, leaf, value)


def _online_linear_forward(layer):
    def forward(x):
        weight = layer.weight
        for delta in getattr(layer, "forge_online_loras", {}).get("weight", []):
            weight = weight + delta
        return F.linear(x, weight, layer.bias)
    return forward


class ForgeLikeLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.online_backup = []
        model.lora_loader = self

    @torch.no_grad()
    def refresh(self, patches, online=()):
        """patches: {parameter key: delta}; keys in `online` are applied at forward instead."""
        for layer in set(self.online_backup):
            del layer.forge_online_loras
        self.online_backup = []
        for key, original in self.backup.items():
            set_attr(self.model, key, original)
        self.backup = {}
        for key, delta in patches.items():
            weight = get_attr(self.model, key)
            if key in online:
                layer = get_attr(self.model, key.rpartition(".")[0])
                layer.forge_online_loras = {"weight": [delta]}
                layer.forward = _online_linear_forward(layer)
                self.online_backup.append(layer)
                continue
            self.backup[key] = weight.to(device="cpu")
            set_attr(self.model, key, torch.nn.Parameter(weight + delta, requires_grad=False))
