"""Speed and memory of AutoLoRA against plain LoRA generation, measured side by side in one process on the
same model, seed and LoRA files: plain LoRA generation, AutoLoRA over the full range, gamma 1, the second
half of the range, batched evaluation, and AutoLoRA disabled; in the lean and fast memory modes.

Component level (no WebUI): a UNet with SD1 or SDXL layer sizes and random weights (tests/support/sd_unet.py),
kohya LoRA, LoCon and LoHa files written for it, A1111's merge semantics (tests/support/a1111_like_lora.py)
and AutoLoRA's network switch, sampled with Euler and CFG as the WebUIs do:

    python benchmarks/memory_speed.py                                    # CPU: SD1 and SDXL layer sizes
    python benchmarks/memory_speed.py --device cuda --models sdxl-full --latent 128 --steps 10   # GPU variant

End to end, through a running WebUI's API (`--log` its console output for the held memory, `--pid` its
process for peak RSS):

    python benchmarks/memory_speed.py --url http://127.0.0.1:7860 --lora NAME [--log FILE] [--pid PID] [--fields JSON]

End to end, each variant's request is sent twice in a row and the second one timed (a WebUI redoes work
when the settings change: merges LoRA again, encodes the prompt again), and its ratio is to the plain
LoRA request of the same round.

Prints one table row per variant: the median time of its steps over the repeats (for the half range, of
the runs' mean step); its ratio to plain LoRA generation, at component level from each step paired with
a plain LoRA step at the same point timed just before it (so a shared machine's drifts cancel; the plain
row's own ratio shows the noise); the memory AutoLoRA held (bytes of its extra tensors, and as a share of
the layers the networks change); the peak memory above plain generation's (peak RSS on CPU,
torch.cuda.max_memory_allocated on CUDA); and one network switch's time (off and on)."""
import argparse
import contextlib
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lib_autolora.core import guidance  # noqa: E402
from lib_autolora.core.params import AutoLoraParams  # noqa: E402
from lib_autolora.hosts.a1111.networks import NetworkSwitch  # noqa: E402
from tests.support.a1111_like_lora import LoraHost, load_kohya  # noqa: E402
from tests.support.kohya_files import write_loha, write_lora  # noqa: E402
from tests.support.sd_unet import lora_layers, make_sd_unet  # noqa: E402

CFG = 7.0
VARIANTS = {  # name -> AutoLoRA settings (None: plain LoRA generation, no AutoLoRA at all)
    "plain LoRA": None,
    "disabled": AutoLoraParams(),
    "full range": AutoLoraParams(True, 1.5),
    "gamma 1": AutoLoraParams(True, 1.0),
    "50 % range": AutoLoraParams(True, 1.5, start=0.5),
    "batched": AutoLoraParams(True, 1.5, batched=True),
}
HEADER = ("| model | file | mode | variant | s/step | x plain | held MiB | held % of LoRA'd | peak +MiB | switch ms |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


# -- memory --

def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets the peak resident set size (VmHWM)
        f.write("5")
    return _status_kib("VmRSS") * 1024


def _peak_above(device, before):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _status_kib("VmHWM") * 1024 - before


def _status_kib(field, pid="self"):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


# -- component level --

class Bench:
    """One model with the Lora stand-in, its conds, and the sampling of each variant."""

    def __init__(self, name, device, dtype, latent, steps):
        self.model = make_sd_unet(name, device=device, dtype=dtype)
        self.host = LoraHost(self.model)
        self.device, self.dtype, self.steps = device, dtype, steps
        # CPU: this process's CPU time, which other processes on a shared machine barely change; CUDA: wall time
        self.clock = time.process_time if device.type == "cpu" else time.perf_counter
        generator = torch.Generator().manual_seed(1)
        config = self.model.config

        def randn(*shape):
            return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

        self.conds = [randn(1, 77, config.context_dim) for _ in range(4)]  # LoRA cond/uncond, base cond/uncond
        self.y = randn(1, config.adm_dim) if config.adm_dim else None
        self.noise = randn(1, 4, latent, latent).float()
        self.sigmas = torch.cat([torch.logspace(1.16, -1.5, steps), torch.zeros(1)]).to(device)

    def evaluate(self, x, sigma, conds):
        """x0 predictions of one model call over len(conds) rows, each row x with one cond."""
        rows = len(conds)
        x_in, s = x.repeat(rows, 1, 1, 1), sigma.repeat(rows)
        y = None if self.y is None else self.y.repeat(rows, 1)
        scaled = (x_in / (s[:, None, None, None] ** 2 + 1) ** 0.5).to(self.dtype)
        eps = self.model(scaled, s, torch.cat(conds), y).float()
        return (x_in - s[:, None, None, None] * eps).chunk(rows)

    def denoise(self, x, sigma, progress, params, switch):
        lora_c, lora_u, base_c, base_u = self.conds
        passes = guidance.Passes.LORA if params is None or not params.enabled else guidance.passes_for(params, progress)
        if passes is guidance.Passes.LORA:
            cond, uncond = self.evaluate(x, sigma, [lora_c, lora_u])
            return guidance.cfg(uncond, cond, CFG)
        if params.batched and switch.merged_everywhere():
            with switch.networks_off(batch_rows=2):
                cond, uncond, b_cond, b_uncond = self.evaluate(x, sigma, self.conds)
        else:
            cond, uncond = self.evaluate(x, sigma, [lora_c, lora_u])
            with switch.networks_off():
                b_cond, b_uncond = self.evaluate(x, sigma, [base_c, base_u])
        return guidance.autolora(guidance.cfg(b_uncond, b_cond, CFG), guidance.cfg(uncond, cond, CFG), params.gamma)

    def timed(self, function, *args):
        started = self.clock()
        result = function(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return result, self.clock() - started

    @torch.no_grad()
    def sample(self, params, switch):
        """Samples; returns [(the step's time, the time of a plain LoRA step at the same x just before it)]:
        the pairs make the ratios immune to the slow drifts of a shared machine."""
        x, times = self.noise * self.sigmas[0], []
        for i, (s, s_next) in enumerate(zip(self.sigmas[:-1], self.sigmas[1:])):
            sigma, progress = s.reshape(1), i / self.steps
            _, plain = self.timed(self.denoise, x, sigma, progress, None, None)
            denoised, step = self.timed(self.denoise, x, sigma, progress, params, switch)
            x = x + (x - denoised) / s * (s_next - s)
            times.append((step, plain))
        self.final_x = x
        return times


def write_file(model, kind, rank, folder):
    path = os.path.join(folder, f"{kind}.safetensors")
    (write_loha if kind == "loha" else write_lora)(path, model, lora_layers(model, kind), rank=rank)
    return path


def run_file(bench, kind, path, mode_names, repeats):
    """Times every variant of one LoRA file: ({(mode, variant): [s/step]}, {(mode, variant): stats})."""
    bench.host.loaded_networks[:] = [load_kohya(path, kind)]
    bench.sample(None, None)  # merges the file's networks, warms up
    runs = [(mode, name, params) for mode in mode_names for name, params in VARIANTS.items()
            if params is not None and params.enabled or mode == mode_names[0]]
    times, stats = {run[:2]: [] for run in runs}, {}
    for repeat in range(repeats):
        for mode, name, params in runs[repeat % len(runs):] + runs[:repeat % len(runs)]:
            switch = NetworkSwitch(bench.host.loaded_networks, bench.host.layers.values(), mode)
            before = _peak_reset(bench.device)
            times[(mode, name)].append(bench.sample(params, switch))
            stats[(mode, name)] = (switch.held_bytes(), switch.changed_bytes(), _peak_above(bench.device, before),
                                   _switch_seconds(switch) if switch.switches else None, switch.describe())
            if name in ("disabled", "gamma 1", "plain LoRA"):
                assert switch.switches == 0 and not bench.model._forward_hooks, "nothing may be installed"
            switch.release()
    return times, stats


def step_time(runs, params):
    """(seconds per step, ratio to the paired plain LoRA steps): medians over every step of every run
    where the steps are alike, else (a range that covers part of the steps) over the runs' totals."""
    if params is not None and params.enabled and (params.start, params.end) != (0.0, 1.0):
        return (statistics.median(statistics.fmean(s for s, _ in run) for run in runs),
                statistics.median(sum(s for s, _ in run) / sum(p for _, p in run) for run in runs))
    return (statistics.median(s for run in runs for s, _ in run),
            statistics.median(s / p for run in runs for s, p in run))


def _switch_seconds(switch, count=20):
    """One switch off and on again, once the generation's first switch has set everything up."""
    started = time.perf_counter()
    for _ in range(count):
        with switch.networks_off():
            pass
    return (time.perf_counter() - started) / count


def component(args):
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    clock = "CPU time" if device.type == "cpu" else "wall time"
    print(f"torch {torch.__version__}, {device} ({clock}), {dtype}, {torch.get_num_threads()} threads, latent "
          f"{args.latent}x{args.latent}, batch 1 (cond and uncond rows), {args.steps} Euler steps, CFG {CFG}, "
          f"median of {args.repeats} runs, LoRA rank {args.rank}")
    print(HEADER)
    with tempfile.TemporaryDirectory() as folder:
        for model_name in args.models.split(","):
            bench = Bench(model_name, device, dtype, args.latent, args.steps)
            paths = {kind: write_file(bench.model, kind, args.rank, folder) for kind in args.files.split(",")}
            for kind, path in paths.items():
                times, stats = run_file(bench, kind, path, args.modes.split(","), args.repeats)
                plain_peak = stats[(args.modes.split(",")[0], "plain LoRA")][2]
                for (mode, name), values in times.items():
                    held, changed, peak, switch_s, path = stats[(mode, name)]
                    step, ratio = step_time(values, VARIANTS[name])
                    share = f"{100 * held / changed:.1f}" if changed else "-"
                    switch_ms = f"{switch_s * 1000:.2f}" if switch_s else "-"
                    shown_mode = mode if VARIANTS[name] and VARIANTS[name].enabled else "-"
                    print(f"| {model_name} | {kind} | {shown_mode} | {name} | {step:.3f} | {ratio:.3f} | "
                          f"{held / 2**20:.1f} | {share} | {(peak - plain_peak) / 2**20:.0f} | {switch_ms} |"
                          + (f" {path}" if args.paths and path else ""))
            del bench
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()


# -- end to end --

def live(args):
    from tests.live.webui import WebUI
    webui = WebUI(args.url)
    payload = {**dict(prompt=f"a photo of a cat <lora:{args.lora}:1>", negative_prompt="blurry", seed=1,
                      steps=args.steps, cfg_scale=CFG, width=args.size, height=args.size, sampler_name="Euler"),
               **json.loads(args.fields)}
    runs = [("-", "plain LoRA", None)] + [(mode, name, params) for mode in args.modes.split(",")
                                          for name, params in VARIANTS.items() if params is not None]
    clock = _process_seconds if args.pid else (lambda pid: time.perf_counter())
    pairs, stats = {run[:2]: [] for run in runs}, {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        timed = {}
        for mode, name, params in runs:
            request = dict(payload)
            if params is not None:
                named = {"enabled": params.enabled, "gamma": params.gamma, "start": params.start,
                         "memory": mode, "batched": params.batched}
                request["alwayson_scripts"] = {"autolora": {"args": [named]}}
            # a request with the same settings first: what a WebUI redoes when the settings change (LoRA
            # merged again, conds encoded) is not counted, only the generation as a user repeats it
            webui.txt2img(request)
            before, started = _live_peak_reset(args.pid), clock(args.pid)
            webui.txt2img(request)
            timed[(mode, name)] = clock(args.pid) - started
            stats[(mode, name)] = (_from_log(args.log) if params is not None and params.enabled else None,
                                   _status_kib("VmHWM", args.pid) * 1024 - before if args.pid else None)
        if repeat:  # each variant against plain LoRA generation of the same round
            for key, seconds in timed.items():
                pairs[key].append((seconds, timed[("-", "plain LoRA")]))
    plain_peak = stats[("-", "plain LoRA")][1]
    what = "the WebUI process's CPU time" if args.pid else "wall time"
    print(f"{args.url}, LoRA {args.lora}, {args.size}x{args.size}, {args.steps} Euler steps, CFG {payload['cfg_scale']}"
          f"{', ' + args.fields if args.fields != '{}' else ''}, median of "
          f"{args.repeats} requests, {what} per step (the request's text encoding and decoding included)")
    print(HEADER)
    for (mode, name), values in pairs.items():
        logged, peak = stats[(mode, name)]
        step = statistics.median(t for t, _ in values) / args.steps
        ratio = statistics.median(t / p for t, p in values)
        held = f"{logged[0]:.1f} | {logged[1]}" if logged else "- | -"
        switch_ms = f"{logged[2]:.1f}" if logged and logged[2] is not None else "-"
        peak_text = f"{(peak - plain_peak) / 2**20:.0f}" if peak is not None else "-"
        print(f"| webui | {args.lora} | {mode if name != 'disabled' else '-'} | {name} | {step:.3f} | "
              f"{ratio:.3f} | {held} | {peak_text} | {switch_ms} |")


def _process_seconds(pid):
    """User and system CPU time of a process (and its finished children), in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _live_peak_reset(pid):
    if not pid:
        return 0
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS", pid) * 1024


def _from_log(log):
    """(MiB held, its share of the LoRA'd layers, ms per switch) from the last AutoLoRA console line in the
    WebUI's output (ms per switch: the generation's total over its switches, the first one's set-up included)."""
    if not log:
        return None
    with contextlib.suppress(OSError), open(log, errors="replace") as f:
        lines = [line for line in f if line.startswith("AutoLoRA: gamma")]
        if lines:
            held = re.search(r"([\d.]+) MiB held(?: \((\d+) % of)?", lines[-1])
            switches = re.search(r"(\d+) network switches took (\d+) ms", lines[-1])
            per_switch = int(switches[2]) / int(switches[1]) if switches and int(switches[1]) else None
            if held is None:  # nothing installed (gamma 1: plain LoRA generation)
                return 0.0, "-", per_switch
            return float(held[1]), held[2] or "-", per_switch
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running WebUI's URL: benchmark end to end through its API")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="sd1,sdxl", help="of tests/support/sd_unet.py's UNET_CONFIGS")
    parser.add_argument("--files", default="lora,locon,loha")
    parser.add_argument("--modes", default="lean,fast")
    parser.add_argument("--latent", type=int, default=16, help="latent size (image size / 8)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU time is measured)")
    parser.add_argument("--paths", action="store_true", help="print each variant's path (ways of the layers)")
    parser.add_argument("--lora", default="autolora_test_lora", help="end to end: the LoRA's name")
    parser.add_argument("--size", type=int, default=256, help="end to end: image size")
    parser.add_argument("--fields", default="{}", help="end to end: further request fields as JSON, e.g. Flux-dev's "
                        '\'{"cfg_scale": 1, "distilled_cfg_scale": 3.5, "scheduler": "Simple"}\'')
    parser.add_argument("--log", help="end to end: the WebUI's console output, for the held memory")
    parser.add_argument("--pid", type=int, help="end to end: the WebUI's process id, for its peak RSS")
    args = parser.parse_args()
    live(args) if args.url else component(args)


if __name__ == "__main__":
    main()
