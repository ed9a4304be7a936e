"""Cost of one LoRA switch (off for the base pass, on again) on a UNet-shaped model with A1111's
merge semantics: AutoLoRA's NetworkSwitch against the naive way, emptying `loaded_networks`
(every changed layer restores its CPU backup, then re-merges on the next LoRA forward).

    python benchmarks/switch_cost.py [--channels 320] [--repeats 10]

Prints milliseconds per switch for both, the ratio, and the memory the switch holds."""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lib_autolora.hosts.a1111.networks import NetworkSwitch  # noqa: E402
from tests.support.a1111_like_lora import LoraHost, load_kohya  # noqa: E402
from tests.support.kohya_files import write_lora  # noqa: E402
from tests.support.tiny_unet import TinyUNet  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = TinyUNet(channels=args.channels, context_dim=768).eval()
    layers = [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with tempfile.TemporaryDirectory() as folder:
        path = write_lora(os.path.join(folder, "lora.safetensors"), model, layers)
        host = LoraHost(model)
        host.loaded_networks.append(load_kohya(path, "lora"))
    switch = NetworkSwitch(host.loaded_networks, host.layers.values())
    inputs = (torch.randn(2, 4, 16, 16), torch.tensor([3.0, 3.0]), torch.randn(2, 8, 768))

    def apply_all():  # what the next LoRA forward does to each layer, without the forward itself
        for layer in host.layers.values():
            host.apply_weights(layer)

    with torch.no_grad():
        model(*inputs)
        with switch.networks_off():  # first switch makes the device copies
            pass
        started = time.perf_counter()
        for _ in range(args.repeats):
            with switch.networks_off():
                apply_all()
            apply_all()
        ours = (time.perf_counter() - started) / args.repeats

        saved = list(host.loaded_networks)
        started = time.perf_counter()
        for _ in range(args.repeats):
            host.loaded_networks.clear()
            apply_all()
            host.loaded_networks[:] = saved
            apply_all()
        naive = (time.perf_counter() - started) / args.repeats

    params = sum(p.numel() for p in model.parameters())
    print(f"UNet-shaped model: {params / 1e6:.1f}M parameters, LoRA on {len(layers)} layers")
    print(f"NetworkSwitch: {ours * 1000:.2f} ms per switch (off and on), holds {switch.held_bytes() / 2**20:.1f} MiB")
    print(f"naive (empty loaded_networks): {naive * 1000:.2f} ms per switch")
    print(f"ratio naive / NetworkSwitch: {naive / ours:.0f}x")


if __name__ == "__main__":
    main()
