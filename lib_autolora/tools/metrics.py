"""The paper's diversity metric (Eq. 8) and its Div-X products (Tables 1-2).

    Diversity(X) = 1 - 2 / (N (N - 1)) * sum_{i<j} cos(f(x_i), f(x_j))
    Div-X        = Diversity * mean score X   (X: CPS, PC or SA, each 0-5)

    python -m lib_autolora.tools.metrics diversity DIR [DIR ...] [--features dinov2|pixels] [--scores scores.csv]

f is an image feature extractor. The paper uses DINOv2 (facebook/dinov2-giant); `--features
dinov2` (the default) uses it through `transformers` when that is installed and the model is in the
local Hugging Face cache; nothing is downloaded unless `--allow-download` is given. When DINOv2 is
unavailable it falls back, with a printed note, to pixel features: each image downscaled to 32x32
RGB and centred on its own mean, so the cosine similarity of two images is the Pearson correlation
of their pixels. Pixel diversities are comparable with each other, not with DINOv2 ones or the
paper's tables.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_DINOV2 = "facebook/dinov2-giant"
PIXEL_SIZE = 32


def diversity_from_similarity(similarity: np.ndarray | Sequence[Sequence[float]]) -> float:
    """1 - the mean of the pairwise similarities above the diagonal of an N x N matrix (N >= 2)."""
    similarity = np.asarray(similarity, dtype=np.float64)
    n = len(similarity)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {n}")
    upper = similarity[np.triu_indices(n, k=1)]
    return float(1.0 - upper.mean())


def diversity(features: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Eq. 8 on an N x D array of feature vectors (N >= 2). A zero vector has similarity 0 to all."""
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms > 0, norms, 1.0)
    return diversity_from_similarity(np.clip(unit @ unit.T, -1.0, 1.0))  # rounding can pass +-1


def div_x(diversity_value: float, score: float | Sequence[float]) -> float:
    """The paper's Div-CPS / Div-PC / Div-SA: the diversity of a set times its mean score."""
    scores = np.atleast_1d(np.asarray(score, dtype=np.float64))
    return float(diversity_value * scores.mean())


# ------------------------------------------------------------------------------------ features

class FeaturesUnavailable(RuntimeError):
    """DINOv2 cannot run here (no transformers, or the model is not available locally)."""


def pixel_features(images: Iterable[Image.Image], size: int = PIXEL_SIZE) -> np.ndarray:
    """Each PIL image downscaled to size x size RGB, flattened and centred on its own mean."""
    rows = []
    for image in images:
        small = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float64).reshape(-1) / 255.0
        rows.append(small - small.mean())
    return np.stack(rows)


class Dinov2:
    """DINOv2 image features (the CLS token of the last layer), as in the paper."""

    def __init__(self, model: str = DEFAULT_DINOV2, allow_download: bool = False) -> None:
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModel
        except ImportError as error:
            raise FeaturesUnavailable(f"transformers is not installed ({error})") from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(model, local_files_only=not allow_download)
            self.model = AutoModel.from_pretrained(model, local_files_only=not allow_download).eval()
        except (OSError, ValueError) as error:
            where = "" if allow_download else " in the local Hugging Face cache (pass --allow-download to fetch it)"
            raise FeaturesUnavailable(f"{model} is not available{where}: {str(error).splitlines()[0]}") from None
        self.torch = torch

    def __call__(self, images: Sequence[Image.Image], batch: int = 16) -> np.ndarray:
        rows = []
        with self.torch.no_grad():
            for i in range(0, len(images), batch):
                inputs = self.processor(images=[im.convert("RGB") for im in images[i:i + batch]], return_tensors="pt")
                rows.append(self.model(**inputs).last_hidden_state[:, 0].float().numpy())
        return np.concatenate(rows)


def feature_extractor(kind: str = "dinov2", model: str = DEFAULT_DINOV2, allow_download: bool = False,
                      note: Callable[[str], object] = print,
                      ) -> tuple[str, Callable[[Sequence[Image.Image]], np.ndarray]]:
    """(name, function from a list of PIL images to an N x D array). DINOv2 falls back to pixels."""
    if kind == "pixels":
        return "pixels", pixel_features
    if kind != "dinov2":
        raise ValueError(f"features must be dinov2 or pixels, got {kind!r}")
    try:
        return "dinov2", Dinov2(model, allow_download)
    except FeaturesUnavailable as error:
        note(f"note: DINOv2 unavailable ({error}); using pixel features ({PIXEL_SIZE}x{PIXEL_SIZE} RGB, "
             f"mean-centred): compare these diversities only with each other, not with the paper's.")
        return "pixels", pixel_features


def image_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))


def load_images(paths: Iterable[str]) -> list[Image.Image]:
    from PIL import Image
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


# -------------------------------------------------------------------------------------- scores

def read_scores(path: str, column: str = "score") -> dict[str, float]:
    """{absolute image path: score} from a CSV with a `file` (or `path`/`image`) column and `column`.
    Relative file names are taken relative to the CSV's folder; empty scores are skipped."""
    base = os.path.dirname(os.path.abspath(path))
    scores: dict[str, float] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        name_column = next((c for c in ("file", "path", "image") if c in (reader.fieldnames or [])), None)
        if name_column is None or column not in (reader.fieldnames or []):
            raise ValueError(f"{path} needs a file (or path/image) column and a {column!r} column; "
                             f"it has {reader.fieldnames}")
        for row in reader:
            if row[column].strip():
                scores[os.path.normpath(os.path.join(base, row[name_column]))] = float(row[column])
    return scores


def folder_scores(paths: Iterable[str], scores: Mapping[str, float]) -> list[float]:
    keys = [os.path.normpath(os.path.abspath(p)) for p in paths]
    return [scores[key] for key in keys if key in scores]


# ----------------------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_autolora.tools.metrics", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("diversity", help="Eq. 8 per folder of images (one folder = one set X)")
    command.add_argument("folders", nargs="+", metavar="DIR")
    command.add_argument("--features", choices=("dinov2", "pixels"), default="dinov2",
                         help="feature extractor f (default dinov2, falling back to pixels with a note)")
    command.add_argument("--dinov2-model", default=DEFAULT_DINOV2, help=f"default {DEFAULT_DINOV2} (the paper's)")
    command.add_argument("--allow-download", action="store_true", help="let transformers download the DINOv2 model")
    command.add_argument("--scores",
                         help="CSV with a file column and a score column: adds Div-X = diversity * mean score")
    command.add_argument("--score-column", default="score", help="score column of --scores (default: score)")
    args = parser.parse_args(argv)

    name, extract = feature_extractor(args.features, args.dinov2_model, args.allow_download,
                                      note=lambda text: print(text, file=sys.stderr))
    scores = read_scores(args.scores, args.score_column) if args.scores else None
    header = ["folder", "images", "features", "diversity"] + (["mean_score", "div_x"] if scores is not None else [])
    print("\t".join(header))
    status = 0
    for folder in args.folders:
        paths = image_files(folder)
        if len(paths) < 2:
            print(f"{folder}: needs at least 2 images, has {len(paths)}", file=sys.stderr)
            status = 1
            continue
        value = diversity(extract(load_images(paths)))
        row = [folder, str(len(paths)), name, f"{value:.4f}"]
        if scores is not None:
            found = folder_scores(paths, scores)
            row += [f"{np.mean(found):.4f}", f"{div_x(value, found):.4f}"] if found else ["", ""]
        print("\t".join(row))
    return status


if __name__ == "__main__":
    sys.exit(main())
