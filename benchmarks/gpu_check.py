"""The GPU check: AutoLoRA on one CUDA GPU as users run it, in one command (sized for at most 8 minutes on one
GPU, not yet timed on one; needs torch, numpy and safetensors, no WebUI, nothing downloaded):

    python benchmarks/gpu_check.py                       # CUDA: SDXL's full UNet, float16 and bfloat16
    python benchmarks/gpu_check.py --device cpu --quick  # the same rows on a small UNet, in seconds

At SDXL's full UNet size (tests/support/sd_unet.py, random weights) with kohya LoRA files of rank 16 and 64
on the attention and feed-forward layers and a LoCon, merged the way A1111 merges (CPU backups of the
originals, tests/support/a1111_like_lora.py), it samples with Euler and CFG and prints, per dtype, file and
memory mode (lean, fast):

- each variant's time per step against plain LoRA generation, step by step in the same run (disabled, full
  range, gamma 1, the second half of the range, batched);
- the peak device memory above plain LoRA generation's (torch.cuda.max_memory_allocated; peak resident
  memory on the CPU), and what the network switch holds while sampling and after the pass has ended
  (`end_pass`, before the VAE decode: 0);
- the lean path's error against the fast one (which is the base model exactly), on the final latent,
  relative to its spread;

and what `auto` chooses for the file's copies with 8, 12 and 24 GB free, through `device_budget`. The table
is also written as JSON and markdown (--out)."""
import argparse
import json
import os
import sys
import tempfile
import time
import unittest.mock

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memory_speed import VARIANTS, Bench, _peak_above, _peak_reset, step_time  # noqa: E402

from lib_autolora.hosts.a1111.networks import NetworkSwitch  # noqa: E402
from lib_autolora.hosts.layers import layer_off  # noqa: E402
from tests.support.a1111_like_lora import load_kohya  # noqa: E402
from tests.support.kohya_files import write_lora  # noqa: E402
from tests.support.sd_unet import lora_layers  # noqa: E402

GB = 10**9
FREE_GB = (8, 12, 24)
FILES = {"lora r16": ("lora", 16), "lora r64": ("lora", 64), "locon r16": ("locon", 16)}
FULL = {"model": "sdxl-full", "latent": 128, "steps": 8, "repeats": 2, "dtypes": "float16,bfloat16"}
QUICK = {"model": "sd-tiny", "latent": 8, "steps": 3, "repeats": 1, "dtypes": "float16,bfloat16"}
COLUMNS = ("dtype", "file", "mode", "variant", "s/step", "x plain", "peak +MiB", "held while sampling MiB",
           "held after MiB", "lean-fast error")


def auto_choices(switch):
    """The path `auto` takes for this switch's layers with 8, 12 and 24 GB free, and the copies' size."""
    offs = list(switch.layers.ways)
    choices = {}
    for free in FREE_GB:
        ways = layer_off.LayerSwitch("auto")
        with unittest.mock.patch.object(layer_off, "device_budget", lambda device, free=free: free * GB):
            ways.decide(offs)
        choices[f"{free} GB"] = ways.path
    return choices, sum(off.copy_bytes() for off in offs)


def run_file(bench, name, path, repeats):
    """Rows of one LoRA file: each variant in each mode, timed against plain LoRA steps."""
    bench.host.loaded_networks[:] = [load_kohya(path, name)]
    bench.sample(None, None)  # merges the networks, warms up
    before = _peak_reset(bench.device)
    plain_runs = [bench.sample(None, None) for _ in range(repeats)]
    plain_peak = _peak_above(bench.device, before)
    rows = [{"mode": "-", "variant": "plain LoRA", "times": plain_runs, "peak": 0, "held": 0, "after": 0}]
    finals, choices = {}, None
    for mode in ("lean", "fast"):
        for variant, params in VARIANTS.items():
            if params is None or (not params.enabled and mode == "fast"):
                continue
            runs = []
            for _ in range(repeats):
                switch = NetworkSwitch(bench.host.loaded_networks, bench.host.layers.values(), mode)
                before = _peak_reset(bench.device)
                runs.append(bench.sample(params, switch))
                peak = _peak_above(bench.device, before)
                held = switch.held_bytes()
                switch.release_held()  # what Generation.end_pass does when the sampler returns
                after = switch.held_bytes()
                if variant == "full range":
                    finals[mode] = bench.final_x
                    if choices is None:
                        choices = auto_choices(switch)
                switch.release()
            rows.append({"mode": mode if params.enabled else "-", "variant": variant, "times": runs,
                         "peak": peak - plain_peak, "held": held, "after": after})
    error = float((finals["lean"] - finals["fast"]).pow(2).mean().sqrt() / finals["fast"].std())
    return rows, error, choices


def table(results):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for result in results:
        for row in result["rows"]:
            lean_full = row["variant"] == "full range" and row["mode"] == "lean"
            error = f"{result['lean_fast_error']:.2e}" if lean_full else ""
            lines.append(f"| {result['dtype']} | {result['file']} | {row['mode']} | {row['variant']} | "
                         f"{row['s/step']:.4f} | {row['x plain']:.3f} | {round(row['peak'] / 2**20)} | "
                         f"{row['held'] / 2**20:.1f} | {row['after'] / 2**20:.1f} | {error} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="a small UNet, latent 8, 3 steps, one run")
    parser.add_argument("--dtypes", help="comma-separated (default float16,bfloat16)")
    parser.add_argument("--out", default=".", help="folder for gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here (run with --device cpu --quick on a CPU)")
    started = time.perf_counter()
    header = (f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, "
              f"UNet {setup['model']}, latent {setup['latent']}x{setup['latent']}, {setup['steps']} Euler steps, "
              f"median of {setup['repeats']} runs, peak memory as "
              f"{'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'peak resident memory'}")
    print(header)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for dtype_name in (args.dtypes or setup["dtypes"]).split(","):
            dtype = getattr(torch, dtype_name)
            bench = Bench(setup["model"], device, dtype, setup["latent"], setup["steps"])
            for name, (kind, rank) in FILES.items():
                path = os.path.join(folder, f"{kind}{rank}.safetensors")
                write_lora(path, bench.model, lora_layers(bench.model, kind), rank=rank)
                rows, error, (choices, copies) = run_file(bench, name, path, setup["repeats"])
                for row in rows:
                    params = VARIANTS[row["variant"]]
                    row["s/step"], row["x plain"] = step_time(row.pop("times"), params)
                results.append({"dtype": dtype_name, "file": name, "rows": rows, "lean_fast_error": error,
                                "auto": choices, "copies_bytes": copies})
                print(f"{dtype_name} {name}: auto takes " + ", ".join(f"{path} with {free} free"
                                                                     for free, path in choices.items())
                      + f" (copies {copies / GB:.2f} GB); lean-vs-fast error {error:.2e}")
            del bench
            if device.type == "cuda":
                torch.cuda.empty_cache()
    markdown = table(results)
    print(markdown)
    seconds = time.perf_counter() - started
    print(f"gpu_check: {seconds:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as out:
        json.dump({"setup": header, "seconds": seconds, "results": results}, out, indent=1)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as out:
        out.write(header + "\n\n" + markdown + "\n")


if __name__ == "__main__":
    main()
