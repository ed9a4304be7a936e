"""Cost of one LoRA switch (off for the base pass, on again) on a UNet with the layers of SD1 or SDXL
(their count and names; widths divided to keep it small: a switch's cost is per layer, not per byte),
with A1111's merge semantics and a kohya LoCon file on every Linear and Conv2d layer it trains:

- naive: emptying `loaded_networks` (every changed layer restores its CPU backup, then re-merges);
- AutoLoRA fast: parameter slot swaps (copies of the originals); AutoLoRA lean: instance `forward` swaps
  (the merged output minus the low-rank term);
- the alternatives to instance `forward` swaps: forward hooks registered and removed at each switch, and
  forward hooks registered once per generation and gated by a flag, which cost every LoRA pass their calls.

    python benchmarks/switch_cost.py [--config sd1-full] [--width-divisor 10] [--repeats 50]"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lib_autolora.hosts.a1111.networks import NetworkSwitch  # noqa: E402
from tests.support.a1111_like_lora import LoraHost, load_kohya  # noqa: E402
from tests.support.kohya_files import write_lora  # noqa: E402
from tests.support.sd_unet import UNET_CONFIGS, SDUNet, lora_layers  # noqa: E402


def per_repeat(function, repeats):
    """Seconds of this process's CPU time per call (the machine may be shared)."""
    started = time.process_time()
    for _ in range(repeats):
        function()
    return (time.process_time() - started) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sd1-full", choices=sorted(UNET_CONFIGS))
    parser.add_argument("--width-divisor", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    base = UNET_CONFIGS[args.config]
    config = dataclasses.replace(base, channels=tuple(c // args.width_divisor for c in base.channels),
                                 context_dim=base.context_dim // args.width_divisor, head_dim=base.head_dim and 8,
                                 adm_dim=base.adm_dim // args.width_divisor)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SDUNet(config).eval().requires_grad_(False)
    layers = lora_layers(model, "locon")
    with tempfile.TemporaryDirectory() as folder:
        path = write_lora(os.path.join(folder, "locon.safetensors"), model, layers, rank=4)
        host = LoraHost(model)
        host.loaded_networks.append(load_kohya(path, "locon"))
    y = torch.randn(2, config.adm_dim) if config.adm_dim else None
    inputs = (torch.randn(2, 4, 16, 16), torch.tensor([3.0, 3.0]), torch.randn(2, 8, config.context_dim), y)
    modules = dict(model.named_modules())
    changed = [modules[name] for name in layers]

    def apply_all():  # what the next LoRA forward does to each layer, without the forward itself
        for layer in host.layers.values():
            host.apply_weights(layer)

    results = {}
    with torch.no_grad():
        model(*inputs)
        for mode in ("fast", "lean"):
            switch = NetworkSwitch(host.loaded_networks, host.layers.values(), mode)
            with switch.networks_off():  # the first switch sets the layers up
                pass

            def autolora_switch(switch=switch):
                with switch.networks_off():
                    pass
            results[f"AutoLoRA {mode} ({switch.describe()})"] = per_repeat(autolora_switch, args.repeats)

        saved = list(host.loaded_networks)

        def naive_switch():
            host.loaded_networks.clear()
            apply_all()
            host.loaded_networks[:] = saved
            apply_all()
        results["naive: empty loaded_networks"] = per_repeat(naive_switch, args.repeats)

        def hook(module, args, output):
            return None

        def hooks_per_switch():
            handles = [layer.register_forward_hook(hook) for layer in changed]
            for handle in handles:
                handle.remove()
        results["forward hooks registered per switch"] = per_repeat(hooks_per_switch, args.repeats)

        without = per_repeat(lambda: model(*inputs), args.repeats)
        handles = [layer.register_forward_hook(hook) for layer in changed]
        with_hooks = per_repeat(lambda: model(*inputs), args.repeats)
        for handle in handles:
            handle.remove()

    print(f"{args.config} layout (widths / {args.width_divisor}): {len(host.layers)} layers A1111 names, LoCon on "
          f"{len(changed)}; CPU ms per switch (off and on; naive with the restores and re-merges it causes):")
    for name, seconds in results.items():
        print(f"  {name}: {seconds * 1000:.2f} ms")
    print(f"  forward hooks registered once per generation: 0 ms per switch, but {(with_hooks - without) * 1000:.2f} "
          f"ms added to every model call, LoRA passes included ({without * 1000:.1f} ms without them here)")


if __name__ == "__main__":
    main()
