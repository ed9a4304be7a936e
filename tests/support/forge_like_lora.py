"""A stand-in for Forge's LoraLoader, written from its documented behaviour: the patcher's
`lora_patches` ({(file, strength, model strength, online): {key: [[strength, value, model strength,
offset, function]]}}, values ("lora", (up, down, alpha, mid, dora)), ("loha", (...)) or (diff,))
are merged into new weight Parameters set on the model, the originals kept in `backup` (key ->
tensor on the offload device); "online" patches sit in `forge_online_loras` on their layers and
are added at forward. `kohya_patches` reads a kohya file into that layout."""
import collections

import safetensors.torch
import torch
import torch.nn.functional as F


def get_attr(obj, key):
    for name in key.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj, key, value):
    *path, leaf = key.split(".")
    setattr(get_attr(obj, ".".join(path)) if path else obj, leaf, value)


def _update(value, shape):
    """The update of one patch value at strength 1, in float32, as Forge's merge_lora_to_weight computes it."""
    if len(value) == 1:
        return value[0].float()
    kind, v = value
    if kind == "lora":
        up, down, alpha, mid = (t if t is None or isinstance(t, float) else t.float() for t in v[:4])
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        if mid is not None:  # CP decomposition: fold mid into down
            final = [down.shape[1], mid.shape[0], mid.shape[2], mid.shape[3]]
            down = torch.mm(down.transpose(0, 1).flatten(1), mid.transpose(0, 1).flatten(1))
            down = down.reshape(final).transpose(0, 1)
        return (up.flatten(1) @ down.flatten(1)).reshape(shape) * scale
    if kind == "loha":
        w1a, w1b, alpha, w2a, w2b = (t.float() if torch.is_tensor(t) else t for t in v[:5])
        return ((w1a @ w1b) * (w2a @ w2b)).reshape(shape) * (alpha / w1b.shape[0])
    raise ValueError(f"the stand-in merges no {kind} patches")


def _online_linear_forward(layer):
    def forward(x):
        weight = layer.weight
        for strength, value, *_ in getattr(layer, "forge_online_loras", {}).get("weight", []):
            weight = weight + strength * _update(value, weight.shape)
        return F.linear(x, weight, layer.bias)
    return forward


class ForgeLikeLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])
        model.lora_loader = self

    @torch.no_grad()
    def refresh(self, lora_patches):
        for layer in set(self.online_backup):
            del layer.forge_online_loras
        self.online_backup = []
        for key, original in self.backup.items():
            set_attr(self.model, key, original)
        self.backup = {}
        merged = collections.defaultdict(list)
        for (_, _, _, online), patches in lora_patches.items():
            for key, current in patches.items():
                merged[(key, online)] += current
        for (key, online), patches in merged.items():
            weight = get_attr(self.model, key)
            if online:
                layer = get_attr(self.model, key.rpartition(".")[0])
                layer.forge_online_loras = {"weight": patches}
                layer.forward = _online_linear_forward(layer)
                self.online_backup.append(layer)
                continue
            self.backup[key] = weight.to(device="cpu")
            new = weight.float()
            for strength, value, *_ in patches:
                new = new + strength * _update(value, weight.shape)
            set_attr(self.model, key, torch.nn.Parameter(new.to(weight.dtype), requires_grad=False))
        self.loaded_hash = str(list(lora_patches.keys()))


def diff_patches(deltas, name="deltas", online=False):
    """{key: delta} as one file's patches ("diff" values at strength 1)."""
    return {(name, 1.0, 1.0, online): {key: [[1.0, (delta,), 1.0, None, None]] for key, delta in deltas.items()}}


def kohya_patches(path, model, strength=1.0, name=None, online=False):
    """A kohya LoRA/LoCon/LoHa file as one file's patches on `model`'s `<layer>.weight` keys."""
    groups = collections.defaultdict(dict)
    for key, tensor in safetensors.torch.load_file(path).items():
        layer, _, part = key.partition(".")
        groups[layer.removeprefix("lora_unet_")][part] = tensor
    names = {module_name.replace(".", "_"): module_name for module_name, _ in model.named_modules()}
    patches = {}
    for layer, parts in groups.items():
        alpha = float(parts["alpha"]) if "alpha" in parts else None
        if "lora_down.weight" in parts:
            value = ("lora", (parts["lora_up.weight"], parts["lora_down.weight"], alpha, parts.get("lora_mid.weight"),
                              None))
        else:
            value = ("loha", (parts["hada_w1_a"], parts["hada_w1_b"], alpha, parts["hada_w2_a"], parts["hada_w2_b"],
                              None, None, None))
        patches[names[layer] + ".weight"] = [[strength, value, 1.0, None, None]]
    return {(name or str(path), strength, 1.0, online): patches}
