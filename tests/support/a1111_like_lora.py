"""A stand-in for A1111's built-in Lora extension in merge mode, written from its documented
behaviour, so tier-2 tests can run the network switch on real torch layers without the WebUI:
layers carry `network_layer_name`; at each forward a layer whose `network_current_names` differs
from the loaded networks restores its CPU backup and merges `calc_updown` of each network into
its weight (and bias); kohya files are read from safetensors."""
import collections
import types

import safetensors.torch
import torch

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)


class Network:
    def __init__(self, name, modules, multiplier=1.0):
        self.name, self.modules = name, modules
        self.te_multiplier = self.unet_multiplier = multiplier
        self.dyn_dim = None


class LoraModule:
    """kohya LoRA/LoCon as A1111's NetworkModuleLora holds it: `up_model`, `down_model` and an optional
    `mid_model` (CP decomposition of a convolution) with their weights, `multiplier()`, `calc_scale()`;
    the update is up @ down (or the CP product with mid) * alpha / rank * multiplier."""

    def __init__(self, network, down, up, alpha, mid=None):
        self.network = network
        self.down_model, self.up_model = types.SimpleNamespace(weight=down), types.SimpleNamespace(weight=up)
        self.mid_model = None if mid is None else types.SimpleNamespace(weight=mid)
        self.alpha, self.dim = alpha, down.shape[0]
        self.dora_scale = self.bias = None

    def multiplier(self):
        return self.network.unet_multiplier

    def calc_scale(self):
        return self.alpha / self.dim

    def calc_updown(self, weight):
        up, down = (m.weight.to(weight.device).flatten(1) for m in (self.up_model, self.down_model))
        if self.mid_model is None:
            updown = (up @ down).reshape(weight.shape)
        else:
            updown = torch.einsum("nmkl,in,mj->ijkl", self.mid_model.weight.to(weight.device), up, down)
        return updown * self.calc_scale() * self.multiplier(), None


class LohaModule:
    def __init__(self, network, w1a, w1b, w2a, w2b, alpha, multiplier):
        self.w1, self.w2, self.scale = w1a @ w1b, w2a @ w2b, multiplier * alpha / w1b.shape[0]

    def calc_updown(self, weight):
        return (self.w1 * self.w2).to(weight.device).reshape(weight.shape) * self.scale, None


class NormModule:
    """A "norm" network: replaces-by-adding the weight and bias of a norm layer."""

    def __init__(self, network, w_norm, b_norm):
        self.w_norm, self.b_norm = w_norm, b_norm

    def calc_updown(self, weight):
        return self.w_norm.reshape(weight.shape), self.b_norm


def load_kohya(path, name, multiplier=1.0):
    groups = collections.defaultdict(dict)
    for key, tensor in safetensors.torch.load_file(path).items():
        layer, _, part = key.partition(".")
        groups[layer.removeprefix("lora_unet_")][part] = tensor.float()
    network = Network(name, {}, multiplier)
    for layer, parts in groups.items():
        alpha = float(parts.get("alpha", torch.tensor(1.0)))
        if "lora_down.weight" in parts:
            network.modules[layer] = LoraModule(network, parts["lora_down.weight"], parts["lora_up.weight"], alpha,
                                                parts.get("lora_mid.weight"))
        elif "hada_w1_a" in parts:
            factors = (parts[f"hada_w{i}_{s}"] for i in (1, 2) for s in ("a", "b"))
            network.modules[layer] = LohaModule(network, *factors, alpha, multiplier)
        elif "w_norm" in parts:
            network.modules[layer] = NormModule(network, parts["w_norm"], parts.get("b_norm"))
    return network


class LoraHost:
    """Holds `loaded_networks` and patches the model's layers like the Lora extension does."""

    def __init__(self, model, backup_dtype=None):
        """`backup_dtype`: the backups' dtype, where it should differ from the weights' (float64 backups stand
        for CPU backups of a model on a GPU: a copy of them on the model's device then costs memory)."""
        self.loaded_networks = []
        self.backup_dtype = backup_dtype
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

    def _backup(self, tensor):
        return tensor.to("cpu", dtype=self.backup_dtype or tensor.dtype, copy=True)

    @torch.no_grad()
    def apply_weights(self, layer):
        wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in self.loaded_networks)
        if not hasattr(layer, "network_weights_backup") and wanted:
            if isinstance(layer, torch.nn.MultiheadAttention):
                layer.network_weights_backup = (self._backup(layer.in_proj_weight),
                                                self._backup(layer.out_proj.weight))
                layer.network_bias_backup = self._backup(layer.out_proj.bias)
            else:
                layer.network_weights_backup = self._backup(layer.weight)
                layer.network_bias_backup = None if layer.bias is None else self._backup(layer.bias)
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
