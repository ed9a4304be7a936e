"""Tier 2: the lean path in half precision, on layers of SD1's and SDXL's sizes (attention, cross-attention
from the text encoder's width, feed-forward, 3x3 convolutions) holding kohya LoRA, LoCon and CP-LoCon
files merged by the A1111 Lora stand-in, in float16 and bfloat16.

The reference is exact arithmetic (float64) on the half-precision model's own weights and inputs. The
plain model's error is its half-precision output against that; the lean path's error is the merged
half-precision layer minus the networks' term against the same reference. The fast path swaps the
original half-precision weights back in and is the plain model bit for bit."""
import copy

import pytest
import torch
from torch import nn

from lib_autolora.hosts.a1111.networks import NetworkSwitch
from tests.support.a1111_like_lora import LoraHost, load_kohya
from tests.support.kohya_files import write_lora

ERROR_RATIO = 2.0  # the lean path's error at most this times the plain model's own half-precision error
SIZES = {"sd1": (320, 768), "sdxl": (1280, 2048)}  # (channels of the widest UNet level's blocks, context width)


class Block(nn.Module):
    """One UNet level's LoRA'd layer kinds at their real widths."""

    def __init__(self, channels, context):
        super().__init__()
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context, channels, bias=False)
        self.ff = nn.Linear(channels, 8 * channels)  # GEGLU's projection
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.tokens, self.image = torch.Size((24, channels)), torch.Size((channels, 6, 6))
        self.context = context

    def forward(self, h, context, image):
        return self.to_q(h), self.to_k(context), self.ff(h), self.conv(image)


LINEAR = ["to_q", "to_k", "ff"]


def _inputs(block, dtype):
    g = torch.Generator().manual_seed(7)
    shapes = ((2, *block.tokens), (2, 12, block.context), (2, *block.image))
    return tuple(torch.randn(*shape, generator=g).to(dtype) for shape in shapes)


def _rms(a, b):
    return float((a.double() - b.double()).pow(2).mean().sqrt())


@torch.no_grad()
def _errors(tmp_path, family, dtype, files):
    """Per output: (plain error, lean error) against exact arithmetic on the half-precision weights."""
    torch.manual_seed(0)
    plain = Block(*SIZES[family]).to(dtype).requires_grad_(False)
    reference = copy.deepcopy(plain).double()
    model = copy.deepcopy(plain)
    host = LoraHost(model)
    for index, (write, multiplier) in enumerate(files):
        path = write(tmp_path / f"net{index}.safetensors", plain)
        host.loaded_networks.append(load_kohya(path, f"net{index}", multiplier))
    inputs = _inputs(plain, dtype)
    exact = reference(*(x.double() for x in inputs))
    half = plain(*inputs)
    merged = model(*inputs)
    results = {}
    for mode in ("lean", "fast"):
        switch = NetworkSwitch(host.loaded_networks, host.layers.values(), mode)
        with switch.networks_off():
            results[mode] = model(*inputs)
        assert switch.describe().startswith(f"{mode} path")
    for out_fast, out_half in zip(results["fast"], half):
        assert torch.equal(out_fast, out_half), "the fast path is the plain model bit for bit"
    changed = [not torch.equal(out_merged, out_half) for out_merged, out_half in zip(merged, half)]
    assert any(changed), "the networks must change the block"
    return [(_rms(h, e), _rms(lean, e)) for h, lean, e, c in zip(half, results["lean"], exact, changed) if c]


def _lora(rank, strength, layers=None, tucker=False, seed=0, alpha=None):
    def write(path, model):
        names = layers or LINEAR + ["conv"]
        return write_lora(path, model, names, rank=rank, seed=seed, strength=strength, tucker=tucker, alpha=alpha)
    return write


CASES = {  # name: [(writer, multiplier)]; strength: the update's spread relative to the weight's
    "lora r4 at 0.6": [(_lora(4, 0.5, LINEAR), 0.6)],
    "lora r16 at 1.0": [(_lora(16, 0.5, LINEAR), 1.0)],
    "lora r64 at 1.3": [(_lora(64, 0.5, LINEAR, alpha=32.0), 1.3)],
    "locon r8 at 1.0": [(_lora(8, 0.5), 1.0)],
    "cp-locon r8 at 0.8": [(_lora(8, 0.5, ["conv"], tucker=True), 0.8)],
    "two networks": [(_lora(8, 0.4, seed=1), 0.7), (_lora(4, 0.4, LINEAR[::2], seed=2), 1.1)],
    "strong lora r16 at 1.0": [(_lora(16, 1.0, LINEAR), 1.0)],
    "strong lora r16 at 2.0": [(_lora(16, 1.0, LINEAR), 2.0)],
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("family", SIZES)
@pytest.mark.parametrize("case", CASES)
def test_lean_in_half_precision_stays_within_twice_the_plain_models_own_error(tmp_path, family, dtype, case):
    errors = _errors(tmp_path, family, dtype, CASES[case])
    ratios = [lean / plain for plain, lean in errors]
    print(f"{family} {str(dtype)[6:]} {case}: lean/plain error " + " ".join(f"{r:.2f}" for r in ratios))
    assert max(ratios) <= ERROR_RATIO


@torch.no_grad()
def test_the_lean_path_leaves_the_tensor_the_host_returned_as_it_was(tmp_path):
    """An extension that keeps the host layer's output (a hook) must not see it change afterwards."""
    plain = Block(*SIZES["sd1"]).requires_grad_(False)
    model = copy.deepcopy(plain)
    host = LoraHost(model)
    host.loaded_networks.append(load_kohya(_lora(4, 0.5)(tmp_path / "a.safetensors", plain), "a"))
    inputs = _inputs(plain, torch.float32)
    model(*inputs)
    kept, host_forward = [], model.to_q.forward

    def keeping(*args):  # the host's forward, keeping what it returns
        out = host_forward(*args)
        kept.append((out, out.clone()))
        return out

    model.to_q.forward = keeping
    switch = NetworkSwitch(host.loaded_networks, host.layers.values(), "lean")
    with switch.networks_off():
        off = model(*inputs)[0]
    hooked, at_the_time = kept[-1]
    assert torch.equal(hooked, at_the_time)
    assert not torch.equal(off, hooked), "the base output is a tensor of its own"
