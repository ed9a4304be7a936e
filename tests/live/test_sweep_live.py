"""Live: the sweep tool (lib_autolora.tools.sweep) against a real WebUI, on a small grid (64x64, 6 steps)."""
import io

import numpy as np
import pytest
from PIL import Image

from lib_autolora.tools import sweep
from tests.live.conftest import LORAS, URL


@pytest.fixture(scope="module")
def swept(host, tmp_path_factory):
    host.use("sd1")
    out = tmp_path_factory.mktemp("sweep-live")
    argv = ["--url", URL, "--prompt", "a photo of a cat", "--negative-prompt", "blurry", "--lora", LORAS[0],
            "--gammas", "1,1.5", "--lora-weights", "0.8", "--seeds", "1,2", "--cfg", "7", "--steps", "6",
            "--width", "64", "--height", "64", "--out", str(out), "--features", "pixels", "--no-plot"]
    image_rows, cell_rows = sweep.main(argv, progress_stream=io.StringIO())
    return dict(out=out, images=image_rows, cells=cell_rows, args=sweep.parse_args(argv))


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_every_image_is_saved_with_its_settings(swept):
    rows = swept["images"]
    assert [(r["gamma"], r["seed"]) for r in rows] == [(1.0, 1), (1.0, 2), (1.5, 1), (1.5, 2)]
    for row in rows:
        assert pixels(swept["out"] / row["file"]).shape == (64, 64, 3)
        text = row["infotext"]
        assert f"<lora:{LORAS[0]}:0.8>" in text and "Steps: 6" in text and f"Seed: {row['seed']}" in text
        assert "AutoLoRA: True" in text
        assert ("AutoLoRA gamma: 1.0" in text) == (row["gamma"] == 1.0)  # 1.5 is the default: not written


def test_gamma_one_is_plain_lora_and_gamma_one_and_a_half_changes_the_image(swept, webui):
    rows = {(r["gamma"], r["seed"]): r for r in swept["images"]}
    cell = sweep.make_cells(swept["args"])[0]
    plain = dict(sweep.txt2img_payload(swept["args"], cell, 1))
    del plain["alwayson_scripts"]
    reference = webui.txt2img(plain)
    # pixels, not bytes: the PNG's infotext chunk differs (it records "AutoLoRA gamma: 1.0")
    assert np.array_equal(reference.pixels[0], pixels(swept["out"] / rows[1.0, 1]["file"]))
    for seed in (1, 2):
        gamma_one, autolora = (pixels(swept["out"] / rows[g, seed]["file"]) for g in (1.0, 1.5))
        assert np.abs(gamma_one.astype(int) - autolora.astype(int)).max() > 0


def test_diversity_per_cell(swept):
    cells = swept["cells"]
    assert [c["gamma"] for c in cells] == [1.0, 1.5]
    for cell in cells:
        assert cell["images"] == 2 and cell["features"] == "pixels"
        assert 0.0 <= cell["diversity"] <= 2.0
    assert (swept["out"] / "images.csv").exists() and (swept["out"] / "cells.csv").exists()
