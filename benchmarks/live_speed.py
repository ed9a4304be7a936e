"""Generation time with AutoLoRA against plain LoRA generation on a running WebUI, same requests,
same machine, interleaved. Prints the medians and their ratio.

    AUTOLORA_WEBUI_URL=http://127.0.0.1:7860 python benchmarks/live_speed.py [--repeats 5] [--size 128] [--steps 20]"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lib_autolora.core.params import AutoLoraParams  # noqa: E402
from tests.live.webui import WebUI  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lora", default="autolora_test_lora")
    args = parser.parse_args()
    webui = WebUI(os.environ["AUTOLORA_WEBUI_URL"])
    payload = dict(prompt=f"a photo of a cat <lora:{args.lora}:1>", seed=1, steps=args.steps, cfg_scale=7,
                   width=args.size, height=args.size, sampler_name="Euler")
    variants = {
        "plain LoRA": payload,
        "AutoLoRA gamma 1.5": {**payload, "alwayson_scripts": {"autolora": {"args": AutoLoraParams(True).to_args()}}},
    }
    times = {name: [] for name in variants}
    for request in variants.values():  # warm-up
        webui.txt2img(request)
    for _ in range(args.repeats):
        for name, request in variants.items():
            started = time.perf_counter()
            webui.txt2img(request)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name}: {median:.2f} s median of {args.repeats}")
    print(f"ratio AutoLoRA / plain LoRA: {medians['AutoLoRA gamma 1.5'] / medians['plain LoRA']:.2f}x "
          f"(two model evaluations per step instead of one)")


if __name__ == "__main__":
    main()
