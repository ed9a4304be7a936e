"""The demo's picture: one panel per sampler, the samples over the base's data and the LoRA's look."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lib_autolora.tools.toy_model import CENTERS, LORA_RADIUS, RING, ring

if TYPE_CHECKING:
    import os

    from PIL import ImageDraw, ImageFont


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


VIEW = (CENTERS[RING] - 1.5, CENTERS[RING] + 1.5)   # the panels show the ring class's quadrant
SAMPLE_BLUE, LORA_RED = (40, 90, 210), (220, 30, 30)


def draw_samples(canvas: ImageDraw.ImageDraw, pixels: np.ndarray, cell: int = 3) -> None:
    """The samples as blue discs, one per cell x cell pixel bin, the area growing with the count, so
    piled-up samples show as big discs."""
    bins, counts = np.unique(np.floor(pixels / cell).astype(int), axis=0, return_counts=True)
    for (bx, by), count in sorted(zip(bins.tolist(), counts.tolist()), key=lambda item: -item[1]):
        x, y, r = (bx + 0.5) * cell, (by + 0.5) * cell, 1.2 + 1.1 * math.sqrt(count)
        canvas.ellipse((x - r, y - r, x + r, y + r), fill=SAMPLE_BLUE)


def draw(result: Any, path: str | os.PathLike[str], size: int = 380) -> None:
    """One PNG, a panel per sampler (a), (b), (c): grey the base's training data, pink the LoRA's
    ring, red circles its six training points, blue discs the samples (bigger where they pile up)."""
    from PIL import Image, ImageDraw
    header, footer = 62, 22
    panels = result.panels()
    image = Image.new("RGB", (size * len(panels), size + header + footer), "white")
    canvas = ImageDraw.Draw(image)

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        xy = (np.asarray(xy) - VIEW[0]) / (VIEW[1] - VIEW[0])
        return np.stack([xy[:, 0] * (size - 1), (1 - xy[:, 1]) * (size - 1)], axis=1)

    target = [tuple(p) for p in to_pixels(ring(LORA_RADIUS, np.linspace(0, 2 * math.pi, 720)))]
    backdrop = Image.new("RGB", (size, size), "white")
    backdrop_canvas = ImageDraw.Draw(backdrop)
    for x, y in to_pixels(result.data):
        backdrop_canvas.point((x, y), fill=(185, 185, 185))
    backdrop_canvas.line(target, fill=(250, 175, 190), width=3)
    font = _font(13)
    for i, s in enumerate(panels):
        offset = i * size
        panel = backdrop.copy()
        panel_canvas = ImageDraw.Draw(panel)
        draw_samples(panel_canvas, to_pixels(s.points))
        for x, y in to_pixels(result.few):
            panel_canvas.ellipse((x - 7, y - 7, x + 7, y + 7), outline=LORA_RED, width=2)
        image.paste(panel, (offset, header))
        f = s.figures
        canvas.text((offset + 8, 4), f"({'abc'[i]}) {s.title}", fill="black", font=font)
        canvas.text((offset + 8, 22), f"diversity {f['diversity']:.3f}   on-domain {f['on_domain']:.0%}",
                    fill="black", font=font)
        canvas.text((offset + 8, 40), f"coverage {f['coverage']:.0%}   near LoRA points {f['near_train']:.0%}",
                    fill="black", font=font)
        if i:
            canvas.line((offset, 0, offset, size + header), fill=(150, 150, 150))
    canvas.text((8, size + header + 3), "the ring prompt's quadrant. grey: base training data (ring r=0.8)   pink: the "
                "LoRA's look (ring r=1.2)   red circles: its 6 training points   blue: samples (disc area ~ count)",
                fill=(80, 80, 80), font=_font(12))
    image.save(path)
