"""Writes LoRA files in the kohya layout (`lora_unet_<layer>.lora_down.weight`, `.lora_up.weight`,
`.alpha`; LoCon on convolutions, optionally with a CP `lora_mid.weight`; LoHa `hada_*`) for the layers
of a torch model, with seeded random weights."""
import safetensors.torch
import torch


def _lora_tensors(layer, rank, generator, strength, tucker):
    """(down, up, mid or None), scaled so the update is about `strength` times the layer's weight spread."""
    mid = None
    if isinstance(layer, torch.nn.Conv2d):
        out_ch, in_ch, kh, kw = layer.weight.shape
        if tucker and kh * kw > 1:
            down = torch.randn(rank, in_ch, 1, 1, generator=generator)
            mid = torch.randn(rank, rank, kh, kw, generator=generator) / (rank * kh * kw) ** 0.5
        else:
            down = torch.randn(rank, in_ch, kh, kw, generator=generator)
        up = torch.randn(out_ch, rank, 1, 1, generator=generator)
    else:
        out_f, in_f = layer.weight.shape
        down = torch.randn(rank, in_f, generator=generator)
        up = torch.randn(out_f, rank, generator=generator)
    scale = strength * float(layer.weight.detach().float().std()) / float(down.norm() * up.norm() / rank) ** 0.5
    return down * scale ** 0.5, up * scale ** 0.5, mid


def write_lora(path, model, layer_names, rank=4, seed=0, strength=1.0, alpha=None, tucker=False):
    """LoRA on Linear layers, LoCon on Conv2d ones (a kxk down and a 1x1 up, or with `tucker` a 1x1 down,
    a kxk mid and a 1x1 up); `alpha` defaults to the rank."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    tensors = {}
    for name in layer_names:
        down, up, mid = _lora_tensors(modules[name], rank, generator, strength, tucker)
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = down.contiguous()
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        if mid is not None:
            tensors[f"{key}.lora_mid.weight"] = mid.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    safetensors.torch.save_file(tensors, path)
    return path


def write_loha(path, model, layer_names, rank=4, seed=1, strength=0.3):
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    tensors = {}
    for name in layer_names:
        out_f, in_f = modules[name].weight.shape
        key = "lora_unet_" + name.replace(".", "_")
        for part, shape in (("hada_w1_a", (out_f, rank)), ("hada_w1_b", (rank, in_f)),
                            ("hada_w2_a", (out_f, rank)), ("hada_w2_b", (rank, in_f))):
            tensors[f"{key}.{part}"] = torch.randn(*shape, generator=generator) * strength
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    safetensors.torch.save_file(tensors, path)
    return path


def write_norm(path, model, layer_names, seed=2, strength=0.2):
    """A "norm" network that also adds a bias: exercises bias handling."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    tensors = {}
    for name in layer_names:
        size = modules[name].weight.shape
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.w_norm"] = torch.randn(*size, generator=generator) * strength
        tensors[f"{key}.b_norm"] = torch.randn(size[0], generator=generator) * strength
    safetensors.torch.save_file(tensors, path)
    return path
