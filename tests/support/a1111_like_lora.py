"""A stand-in for A1111's built-in Lora extension in merge mode, written from its documented
behaviour, so tier-2 tests can run the network switch on real torch layers without the WebUI:
layers carry `network_layer_name`; at each forward a layer whose `network_current_names` differs
from the loaded networks restores its CPU backup and merges `calc_updown` of each network into
its weight (and bias); kohya files are read from safetensors."""
import collections

import safetensors.torch
import torch

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)


class Network:
    def __init__(self, name, modules, multiplier=1.0):
        self.name, self.modules = name, modules
        self.te_multiplier = self.unet_multiplier = multiplier
        self.dyn_dim = None


class LoraModule:
    """kohya LoRA: up @ down * alpha / rank; a 3x3 down with a 1x1 up for convolutions."""

    def __init__(self, down, up, alpha, multiplier):
        self.down, self.up, self.scale = down, up, multiplier * alpha / down.shape[0]

    def calc_updown(self, weight):
        if self.down.dim() == 4:
            updown = torch.einsum("or,rikl->oikl", self.up.flatten(1), self.down)
        else:
            updown = self.up @ self.down
        return updown.reshape(weight.shape) * self.scale, None


class LohaModule:
    def __init__(self, w1a, w1b, w2a, w2b, alpha, multiplier):
        self.w1, self.w2, self.scale = w1a @ w1b, w2a @ w2b, multiplier * alpha / w1b.shape[0]

    def calc_updown(self, weight):
        return (self.w1 * self.w2).reshape(weight.shape) * self.scale, None


class NormModule:
    """A "norm" network: replaces-by-adding the weight and bias of a norm layer."""

    def __init__(self, w_norm, b_norm):
        self.w_norm, self.b_norm = w_norm, b_norm

    def calc_updown(self, weight):
        return self.w_norm.reshape(weight.shape), self.b_norm


def load_kohya(path, name, multiplier=1.0):
    groups = collections.defaultdict(dict)
    for key, tensor in safetensors.torch.load_file(path).items():
        layer, _, part = key.partition(".")
        groups[layer.removeprefix("lora_unet_")][part] = tensor.float()
    modules = {}
    for layer, parts in groups.items():
        alpha = float(parts.get("alpha", torch.tensor(1.0)))
        if "lora_down.weight" in parts:
            modules[layer] = LoraModule(parts["lora_down.weight"], parts["lora_up.weight"], alpha, multiplier)
        elif "hada_w1_a" in parts:
            factors = (parts[f"hada_w{i}_{s}"] for i in (1, 2) for s in ("a", "b"))
            modules[layer] = LohaModule(*factors, alpha, multiplier)
        elif "w_norm" in parts:
            modules[layer] = NormModule(parts["w_norm"], parts.get("b_norm"))
    return Network(name, modules, multiplier)


class LoraHost:
    """Holds `loaded_networks` and patches the model's layers like the Lora extension does."""

    def __init__(self, model):
        self.loaded_networks = []
        self.restores = 0  # copies from the CPU backups: the cost the switch must avoid
        self.layers = {}
        for name, layer in model.named_modules():
            if isinstance(layer, LAYER_TYPES):
                layer.network_layer_name = name.replace(".", "_")
                self.layers[layer.network_layer_name] = layer
                layer.forward = self._forward(layer, layer.forward)

    def _forward(self, layer, original):
        def forward(*args, **kwargs):
            self.apply_weights(layer)
            return original(*args, **kwargs)
        return forward

    def _restore(self, layer):
        self.restores += 1
        if isinstance(layer, torch.nn.MultiheadAttention):
            layer.in_proj_weight.copy_(layer.network_weights_backup[0])
            layer.out_proj.weight.copy_(layer.network_weights_backup[1])
            layer.out_proj.bias.copy_(layer.network_bias_backup)
            return
        layer.weight.copy_(layer.network_weights_backup)
        if layer.network_bias_backup is None:
            layer.bias = None
        else:
            layer.bias.copy_(layer.network_bias_backup)

    @torch.no_grad()
    def apply_weights(self, layer):
        wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in self.loaded_networks)
        if not hasattr(layer, "network_weights_backup") and wanted:
            if isinstance(layer, torch.nn.MultiheadAttention):
                layer.network_weights_backup = (layer.in_proj_weight.to("cpu", copy=True),
                                                layer.out_proj.weight.to("cpu", copy=True))
                layer.network_bias_backup = layer.out_proj.bias.to("cpu", copy=True)
            else:
                layer.network_weights_backup = layer.weight.to("cpu", copy=True)
                layer.network_bias_backup = None if layer.bias is None else layer.bias.to("cpu", copy=True)
        if getattr(layer, "network_current_names", ()) == wanted:
            return
        if hasattr(layer, "network_weights_backup"):
            self._restore(layer)
        name = layer.network_layer_name
        for net in self.loaded_networks:
            if name in net.modules:
                updown, ex_bias = net.modules[name].calc_updown(layer.weight)
                layer.weight.copy_(layer.weight + updown)
                if ex_bias is not None:
                    if layer.bias is None:
                        layer.bias = torch.nn.Parameter(ex_bias.clone(), requires_grad=False)
                    else:
                        layer.bias.copy_(layer.bias + ex_bias)
            elif name + "_q_proj" in net.modules:
                q, k, v = layer.in_proj_weight.chunk(3, 0)
                parts = [net.modules[name + s].calc_updown(w)[0]
                         for s, w in (("_q_proj", q), ("_k_proj", k), ("_v_proj", v))]
                layer.in_proj_weight.copy_(layer.in_proj_weight + torch.vstack(parts))
                out_updown = net.modules[name + "_out_proj"].calc_updown(layer.out_proj.weight)[0]
                layer.out_proj.weight.copy_(layer.out_proj.weight + out_updown)
        layer.network_current_names = wanted
