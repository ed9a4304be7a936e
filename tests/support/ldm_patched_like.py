"""A stand-in for ldm_patched's ModelPatcher (reForge's and Forge Classic's), written from their
behaviour: `patch_model` merges `patches` (key -> delta) into the weights of `model` and keeps each
original in `backup` (reForge: key -> (weight, inplace_update); Classic: key -> tensor), either as
a new Parameter or, with in-place updates, by copying into the model's own Parameter (the backup is
then a copy). reForge's low-VRAM load leaves some modules unmerged, with a LowVramPatch in their
`weight_function`/`bias_function` list that their forward applies. `clone()` shares the backup in
reForge; in Classic each clone starts its own, filled when it is loaded."""
import collections

import torch
import torch.nn.functional as F
from torch import nn

from tests.support.tiny_unet import make_tiny_unet

Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])  # reForge's backup entry


class BaseModelLike(nn.Module):
    """The patcher's model: the UNet under `diffusion_model`, as ldm_patched's BaseModel holds it."""

    def __init__(self):
        super().__init__()
        self.diffusion_model = make_tiny_unet()

    def forward(self, x, sigma, context):
        return self.diffusion_model(x, sigma, context)


class LowVramPatch:
    def __init__(self, key, patches):
        self.key, self.patches = key, patches

    def __call__(self, weight):
        return weight + self.patches[self.key]


def _forward_with_functions(layer):
    """A Linear's forward as ldm_patched's cast ops run it: weight and bias through their function lists."""
    def forward(x):
        weight, bias = layer.weight, layer.bias
        for function in layer.__dict__.get("weight_function", []):
            weight = function(weight)
        for function in layer.__dict__.get("bias_function", []):
            bias = function(bias)
        return F.linear(x, weight, bias)
    return forward


class LdmPatcherLike:
    def __init__(self, model, style="reforge", inplace=False):
        self.model, self.style, self.weight_inplace_update = model, style, inplace
        self.patches, self.backup = {}, {}

    def clone(self):
        n = LdmPatcherLike(self.model, self.style, self.weight_inplace_update)
        n.patches = dict(self.patches)
        n.backup = self.backup if self.style == "reforge" else {}
        return n

    @torch.no_grad()
    def patch_model(self, low_vram=()):
        """Merges every patch, except those of the layers in `low_vram` (Linear layers), which get a LowVramPatch."""
        for key, delta in self.patches.items():
            path, _, name = key.rpartition(".")
            module = self.model.get_submodule(path)
            if path in low_vram:
                module.__dict__.setdefault(f"{name}_function", []).append(LowVramPatch(key, self.patches))
                module.forward = _forward_with_functions(module)
                continue
            weight = getattr(module, name)
            if key not in self.backup:
                original = weight.detach().clone() if self.weight_inplace_update else weight
                self.backup[key] = Backup(original, self.weight_inplace_update) if self.style == "reforge" else \
                    original.detach()
            if self.weight_inplace_update:
                weight.data.copy_(weight + delta)
            else:
                setattr(module, name, nn.Parameter(weight + delta, requires_grad=False))

    @torch.no_grad()
    def unpatch_model(self):
        for key, entry in self.backup.items():
            original = entry.weight if self.style == "reforge" else entry
            path, _, name = key.rpartition(".")
            module = self.model.get_submodule(path)
            if self.weight_inplace_update:
                getattr(module, name).data.copy_(original)
            else:
                setattr(module, name, nn.Parameter(original, requires_grad=False))
        for module in self.model.modules():
            module.__dict__.pop("weight_function", None)
            module.__dict__.pop("bias_function", None)
        if self.style == "reforge":
            self.backup.clear()
        else:
            self.backup = {}
