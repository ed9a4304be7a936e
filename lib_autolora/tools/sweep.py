"""Sweep AutoLoRA settings on a running WebUI and measure them as the paper does (Table 1).

    python -m lib_autolora.tools.sweep --url http://127.0.0.1:7860 --prompt "Anna" --lora disney_princess \\
        --gammas 1,1.5,2 --lora-weights 0.4,0.8 --seeds 1-16 [--w1 5] [--w2 5] [--cfg 5] --out DIR \\
        [--vlm-url http://127.0.0.1:8000/v1 --vlm-model llama-3.2-11b-vision-instruct --vlm-prompt cps]

One grid cell per (LoRA weight, gamma, w1, w2); one image per seed in each cell, generated through
`/sdapi/v1/txt2img` with the prompt plus `<lora:NAME:WEIGHT>` and AutoLoRA's args. gamma 1 is plain
LoRA generation with CFG (the extension runs no base pass), so include it as the baseline. w1/w2 0
mean "the CFG scale". Written to DIR:

    images/<cell>/seed<N>.png   the images, one folder per cell
    images.csv                  one row per image: its settings, the WebUI's infotext, VLM scores
    cells.csv                   one row per cell: diversity (Eq. 8), mean scores, Div-X
    table.png                   diversity, scores and Div-X against the first swept setting
                                (needs matplotlib; the numbers are in cells.csv either way)

Diversity uses `lib_autolora.tools.metrics` (DINOv2 when available locally, else pixel features, with a
note). With `--vlm-url` every image is scored by a vision-language model behind an OpenAI-compatible
chat-completions endpoint, using the paper's Appendix A prompts: `cps` (A.1, character presence,
0-5; `--character`/`--work` name the character) or `pc-sa` (A.2, prompt correspondence and style
adherence, 0-5; `--style` names the style). Set AUTOLORA_VLM_API_KEY if the endpoint wants a key.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from lib_autolora.core.params import AutoLoraParamError, AutoLoraParams
from lib_autolora.tools import metrics
from lib_autolora.tools.http_client import HttpError, http_json
from lib_autolora.tools.vlm import VLM_PROMPTS, VlmScorer

# ------------------------------------------------------------------------------------ grid

def parse_list(text: str, kind: Callable[[str], float] = float) -> list[float]:
    """"1,1.5,2" -> [1.0, 1.5, 2.0]; integers also take ranges: "1-4,9" -> [1, 2, 3, 4, 9]."""
    values: list[float] = []
    for part in str(text).split(","):
        part = part.strip()
        if kind is int and re.fullmatch(r"-?\d+-\d+", part):
            first, last = part.rsplit("-", 1)
            values.extend(range(int(first), int(last) + 1))
        elif part:
            values.append(kind(part))
    return values


def cell_name(lora_weight: float, gamma: float, w1: float, w2: float) -> str:
    cfg = lambda w: "cfg" if not w else f"{w:g}"  # noqa: E731
    return f"lw{lora_weight:g}_g{gamma:g}_w1-{cfg(w1)}_w2-{cfg(w2)}"


def make_cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (LoRA weight, gamma, w1, w2), validated through AutoLoraParams before any request."""
    cells = []
    for lora_weight in args.lora_weights:
        for gamma in args.gammas:
            for w1 in args.w1:
                for w2 in args.w2:
                    params = AutoLoraParams(enabled=True, gamma=gamma, base_cfg=w1, lora_cfg=w2,
                                            start=args.start, end=args.end)
                    cells.append({"cell": cell_name(lora_weight, gamma, w1, w2), "lora_weight": lora_weight,
                                  "gamma": gamma, "w1": w1, "w2": w2, "params": params})
    return cells


def txt2img_payload(args: argparse.Namespace, cell: Mapping[str, Any], seed: int) -> dict[str, Any]:
    payload = {"prompt": f"{args.prompt} <lora:{args.lora}:{cell['lora_weight']:g}>",
               "negative_prompt": args.negative_prompt, "seed": seed, "steps": args.steps,
               "cfg_scale": args.cfg, "width": args.width, "height": args.height, "batch_size": 1, "n_iter": 1,
               "alwayson_scripts": {"autolora": {"args": cell["params"].to_args()}}}
    if args.sampler:
        payload["sampler_name"] = args.sampler
    return payload


# -------------------------------------------------------------------------------- progress

class Progress:
    """A text progress bar on stderr (one line per step when stderr is not a terminal)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 28) -> None:
        self.total, self.done, self.width, self.start = total, 0, width, time.monotonic()
        self.stream = stream or sys.stderr

    def step(self, label: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        filled = int(self.width * self.done / self.total)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label} "
                f"{elapsed:.0f}s elapsed, ~{left:.0f}s left")
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.stream.write(("\r" + line + ("\n" if self.done == self.total else "")) if tty else line + "\n")
        self.stream.flush()


# ------------------------------------------------------------------------------------ sweep

def check_lora(url: str, name: str, timeout: float) -> None:
    names = {lora.get("name") for lora in http_json(url + "/sdapi/v1/loras", timeout=timeout)}
    if name not in names:
        raise SystemExit(f"the WebUI at {url} has no LoRA named {name!r}; it has: {', '.join(sorted(names))}")


def generate(args: argparse.Namespace, cell: Mapping[str, Any], seed: int) -> tuple[bytes, str]:
    """(PNG bytes, infotext) of one image."""
    try:
        response = http_json(args.url + "/sdapi/v1/txt2img", txt2img_payload(args, cell, seed), args.timeout)
    except HttpError as error:
        hint = " (is the AutoLoRA extension installed in that WebUI?)" if "autolora" in error.body.lower() else ""
        raise SystemExit(f"txt2img failed for {cell['cell']} seed {seed}: {error}{hint}") from None
    png = base64.b64decode(response["images"][0].split(",", 1)[-1])
    try:
        infotext = json.loads(response.get("info") or "{}").get("infotexts", [""])[0]
    except (ValueError, AttributeError, IndexError):
        infotext = ""
    return png, infotext


def score_columns(scorer: VlmScorer | None) -> list[str]:
    return list(scorer.keys.values()) if scorer else []


def run_sweep(args: argparse.Namespace, scorer: VlmScorer | None = None,
              extractor: tuple[str, Callable[[Sequence[Any]], np.ndarray]] | None = None,
              progress_stream: TextIO | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate, score and measure the grid. Returns (image rows, cell rows)."""
    os.makedirs(args.out, exist_ok=True)
    cells = make_cells(args)
    name, extract = extractor or metrics.feature_extractor(args.features, args.dinov2_model,
                                                           note=lambda text: print(text, file=sys.stderr))
    progress = Progress(len(cells) * len(args.seeds), progress_stream)
    image_rows, cell_rows = [], []
    for cell in cells:
        folder = os.path.join(args.out, "images", cell["cell"])
        os.makedirs(folder, exist_ok=True)
        rows = []
        for seed in args.seeds:
            png, infotext = generate(args, cell, seed)
            path = os.path.join(folder, f"seed{seed}.png")
            with open(path, "wb") as handle:
                handle.write(png)
            row = {"file": os.path.relpath(path, args.out), "cell": cell["cell"], "prompt": args.prompt,
                   "lora": args.lora, "lora_weight": cell["lora_weight"], "gamma": cell["gamma"],
                   "w1": cell["w1"] or "", "w2": cell["w2"] or "", "cfg_scale": args.cfg, "steps": args.steps,
                   "seed": seed, "width": args.width, "height": args.height, "sampler": args.sampler or "",
                   "infotext": infotext}
            if scorer:
                scores, reply = scorer(png, args.prompt)
                row.update(scores)
                row["vlm_reply"] = reply
            rows.append(row)
            progress.step(f"{cell['cell']} seed {seed}")
        cell_rows.append(measure_cell(cell, rows, args.out, name, extract, score_columns(scorer)))
        image_rows.extend(rows)
    return image_rows, cell_rows


def measure_cell(cell: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out: str, feature_name: str,
                 extract: Callable[[Sequence[Any]], np.ndarray], columns: Sequence[str]) -> dict[str, Any]:
    images = metrics.load_images([os.path.join(out, row["file"]) for row in rows])
    value = metrics.diversity(extract(images)) if len(images) > 1 else float("nan")
    result = {"cell": cell["cell"], "lora_weight": cell["lora_weight"], "gamma": cell["gamma"],
              "w1": cell["w1"] or "", "w2": cell["w2"] or "", "images": len(rows), "features": feature_name,
              "diversity": value}
    for column in columns:
        scores = [row[column] for row in rows if row.get(column) is not None]
        result[column] = float(np.mean(scores)) if scores else float("nan")
        result[f"scored_{column}"] = len(scores)
        result[f"div_{column}"] = metrics.div_x(value, scores) if scores else float("nan")
    return result


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else f"{v:.4f}" if isinstance(v, float) and k not in
                                 ("lora_weight", "gamma", "w1", "w2", "cfg_scale") else v) for k, v in row.items()})


# ------------------------------------------------------------------------------------ tables

def series_label(cell: Mapping[str, Any]) -> str:
    cfg = lambda w: "CFG" if not w else f"{w:g}"  # noqa: E731
    method = "LoRA+CFG" if cell["gamma"] == 1 else f"AutoLoRA g{cell['gamma']:g}"
    return f"{method} w1 {cfg(cell['w1'])} w2 {cfg(cell['w2'])}" if cell["gamma"] != 1 else method


def x_axis(cells: Sequence[Mapping[str, Any]]) -> str:
    """The first of LoRA weight, gamma, w2, w1 that the sweep varies."""
    for key in ("lora_weight", "gamma", "w2", "w1"):
        if len({c[key] for c in cells}) > 1:
            return key
    return "lora_weight"


def text_table(cells: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Table 1 of the paper as text: a row per cell."""
    head = ["LoRA weight", "method", "diversity"]
    for column in columns:
        head += [column.upper(), f"Div-{column.upper()}"]
    lines = ["  ".join(f"{h:>12}" if i != 1 else f"{h:<28}" for i, h in enumerate(head))]
    for c in cells:
        values = [f"{c['lora_weight']:>12g}", f"{series_label(c):<28}", f"{c['diversity']:>12.3f}"]
        for column in columns:
            values += [f"{c[column]:>12.3f}", f"{c['div_' + column]:>12.3f}"]
        lines.append("  ".join(values))
    return "\n".join(lines)


def plot_table(cells: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str) -> str:
    """diversity, each score and each Div-X against the first swept setting; a message either way."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no table.png (pip install matplotlib); the numbers are in cells.csv"
    key = x_axis(cells)
    panels = ["diversity"] + [m for column in columns for m in (column, "div_" + column)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    series: dict[str, list[Mapping[str, Any]]] = {}
    for c in cells:
        label = series_label(c) if key != "gamma" else f"w1 {c['w1'] or 'CFG'} w2 {c['w2'] or 'CFG'}"
        if key != "lora_weight":
            label += f", LoRA weight {c['lora_weight']:g}"
        series.setdefault(label, []).append(c)
    for axis, panel in zip(axes[0], panels):
        for label, members in series.items():
            members = sorted(members, key=lambda c: float(c[key] or 0))
            axis.plot([float(c[key] or 0) for c in members], [c[panel] for c in members], marker="o", label=label)
        axis.set_xlabel({"lora_weight": "LoRA weight", "w1": "w1 (base CFG)", "w2": "w2 (LoRA CFG)"}.get(key, key))
        axis.set_title(panel.replace("div_", "Div-").upper() if panel != "diversity" else "Diversity (Eq. 8)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"wrote {path}"


# --------------------------------------------------------------------------------------- CLI

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lib_autolora.tools.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="the WebUI (started with --api)")
    parser.add_argument("--prompt", required=True, help="the prompt, without the LoRA tag")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--lora", required=True, help="the LoRA's name as in <lora:NAME:weight>")
    parser.add_argument("--lora-weights", type=parse_list, default=[0.8], help="comma-separated (default 0.8)")
    parser.add_argument("--gammas", type=parse_list, default=[1.0, 1.5],
                        help="comma-separated (default 1,1.5; 1 = plain LoRA)")
    parser.add_argument("--w1", type=parse_list, default=[0.0], help="base CFG values (default 0 = the CFG scale)")
    parser.add_argument("--w2", type=parse_list, default=[0.0], help="LoRA CFG values (default 0 = the CFG scale)")
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--end", type=float, default=1.0)
    parser.add_argument("--seeds", type=lambda text: parse_list(text, int), default=list(range(1, 9)),
                        help="images per cell, e.g. 1,2,3 or 1-16 (default 1-8)")
    parser.add_argument("--cfg", type=float, default=7.0, help="the generation's CFG scale (default 7)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--sampler", default=None, help="sampler name (default: the WebUI's)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--features", choices=("dinov2", "pixels"), default="dinov2",
                        help="diversity features (default dinov2, falling back to pixels with a note)")
    parser.add_argument("--dinov2-model", default=metrics.DEFAULT_DINOV2)
    parser.add_argument("--vlm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--vlm-model", help="model name for the endpoint")
    parser.add_argument("--vlm-prompt", choices=sorted(VLM_PROMPTS), default="cps",
                        help="cps: Appendix A.1 character presence; "
                             "pc-sa: A.2 prompt correspondence and style adherence")
    parser.add_argument("--character", default="Princess Anna", help="for --vlm-prompt cps")
    parser.add_argument("--work", default="Disney’s Frozen movie", help="for --vlm-prompt cps")
    parser.add_argument("--style", default="pixel art", help="for --vlm-prompt pc-sa")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    args.url = args.url.rstrip("/")
    if args.vlm_url and not args.vlm_model:
        parser.error("--vlm-url needs --vlm-model")
    return args


def main(argv: Sequence[str] | None = None,
         progress_stream: TextIO | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    args = parse_args(argv)
    try:
        make_cells(args)
    except AutoLoraParamError as error:
        raise SystemExit(str(error)) from None
    check_lora(args.url, args.lora, args.timeout)
    scorer = None
    if args.vlm_url:
        scorer = VlmScorer(args.vlm_url, args.vlm_model, args.vlm_prompt, args.timeout,
                           character=args.character, work=args.work, style=args.style)
    image_rows, cell_rows = run_sweep(args, scorer, progress_stream=progress_stream)
    write_csv(os.path.join(args.out, "images.csv"), image_rows)
    write_csv(os.path.join(args.out, "cells.csv"), cell_rows)
    columns = score_columns(scorer)
    print(f"diversity: Eq. 8 over {len(args.seeds)} images per cell, {cell_rows[0]['features']} features")
    print(text_table(cell_rows, columns))
    unparsed = sum(1 for row in image_rows for c in columns if row.get(c) is None)
    if unparsed:
        print(f"{unparsed} VLM scores could not be parsed: see vlm_reply in images.csv")
    if not args.no_plot:
        print(plot_table(cell_rows, columns, os.path.join(args.out, "table.png")))
    print(f"wrote {len(image_rows)} images, images.csv and cells.csv to {args.out}")
    return image_rows, cell_rows


if __name__ == "__main__":
    main()
