"""Tier 1: the paper's diversity (Eq. 8), Div-X, the pixel fallback and the metrics CLI."""
import csv
import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from lib_autolora.tools import metrics


def test_identical_features_have_diversity_zero():
    vector = np.random.default_rng(0).standard_normal(16)
    assert metrics.diversity(np.stack([vector] * 5)) == pytest.approx(0, abs=1e-12)
    scaled = np.stack([vector, 3 * vector, 0.5 * vector])
    assert metrics.diversity(scaled) == pytest.approx(0, abs=1e-12)  # cosine ignores norm


def test_mutually_orthogonal_features_have_diversity_one():
    assert metrics.diversity(np.eye(4)) == pytest.approx(1, abs=1e-12)
    assert metrics.diversity(np.diag([1.0, 5.0, 0.1])) == pytest.approx(1, abs=1e-12)


def test_known_small_example():
    # cosines: (a, b) 0, (a, c) 1/sqrt 2, (b, c) 1/sqrt 2 -> 1 - sqrt(2) / 3
    features = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert metrics.diversity(features) == pytest.approx(1 - math.sqrt(2) / 3, abs=1e-12)
    assert metrics.diversity([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(2.0)  # opposite features: Eq. 8's maximum


def test_diversity_takes_any_feature_shape_and_needs_two_samples():
    features = np.random.default_rng(1).standard_normal((3, 2, 4))
    assert metrics.diversity(features) == pytest.approx(metrics.diversity(features.reshape(3, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.diversity(np.ones((1, 4)))


def test_a_zero_feature_vector_counts_as_dissimilar():
    assert metrics.diversity([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]) == pytest.approx(1 - 1 / 3)


def test_diversity_from_similarity_averages_above_the_diagonal():
    similarity = np.array([[1.0, 0.2, 0.4], [9.0, 1.0, 0.6], [9.0, 9.0, 1.0]])  # below the diagonal is ignored
    assert metrics.diversity_from_similarity(similarity) == pytest.approx(0.6)


def test_div_x_is_diversity_times_mean_score():
    assert metrics.div_x(0.2, [4.0, 5.0]) == pytest.approx(0.9)
    assert metrics.div_x(0.5, 3) == pytest.approx(1.5)
    # Table 2 of the paper, SD3 AutoLoRA: diversity 0.197, prompt correspondence 3.725 -> Div-PC 0.734
    assert round(metrics.div_x(0.197, 3.725), 3) == 0.734


def gradient(flip=False, size=20):
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.float64), (size, 1))
    if flip:
        ramp = 255 - ramp
    return Image.fromarray(np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8))


def test_pixel_features_are_centred_pixels():
    same = metrics.pixel_features([gradient(), gradient()])
    assert same.shape == (2, metrics.PIXEL_SIZE ** 2 * 3)
    assert abs(same.mean(axis=1)).max() < 1e-12
    assert metrics.diversity(same) == pytest.approx(0, abs=1e-9)
    # centring makes cosine the pixels' correlation: an image and its negative are opposite
    assert metrics.diversity(metrics.pixel_features([gradient(), gradient(flip=True)])) == pytest.approx(2, abs=1e-4)


def test_dinov2_falls_back_to_pixels_with_a_note(monkeypatch):
    def unavailable(model, allow_download):
        raise metrics.FeaturesUnavailable("facebook/dinov2-giant is not available in the local Hugging Face cache")
    monkeypatch.setattr(metrics, "Dinov2", unavailable)
    notes = []
    name, extract = metrics.feature_extractor("dinov2", note=notes.append)
    assert name == "pixels" and extract is metrics.pixel_features
    assert len(notes) == 1 and "DINOv2 unavailable" in notes[0] and "pixel features" in notes[0]
    assert metrics.feature_extractor("pixels", note=notes.append)[0] == "pixels" and len(notes) == 1
    with pytest.raises(ValueError):
        metrics.feature_extractor("clip")


class FakeTransformers(types.ModuleType):
    """Stands in for `transformers`: records from_pretrained's arguments; the "model" returns each
    image's mean colour as its CLS token."""

    def __init__(self, available=True):
        super().__init__("transformers")
        self.calls = []
        module = self

        class Loader:
            @classmethod
            def from_pretrained(cls, name, **kwargs):
                module.calls.append((cls.__name__, name, kwargs))
                if not available:
                    raise OSError(f"We couldn't connect to load {name}\nmore detail")
                return cls()

        class AutoImageProcessor(Loader):
            def __call__(self, images, return_tensors):
                return {"pixel_values": torch.tensor(np.stack([np.asarray(im, dtype=np.float32) for im in images]))}

        class AutoModel(Loader):
            def eval(self):
                return self

            def __call__(self, pixel_values):
                cls_token = pixel_values.mean(dim=(1, 2))[:, None]
                return types.SimpleNamespace(last_hidden_state=torch.cat([cls_token, torch.zeros_like(cls_token)], 1))

        self.AutoImageProcessor, self.AutoModel = AutoImageProcessor, AutoModel


def test_dinov2_loads_only_from_the_local_cache_unless_allowed(monkeypatch):
    fake = FakeTransformers(available=False)
    monkeypatch.setitem(sys.modules, "transformers", fake)
    with pytest.raises(metrics.FeaturesUnavailable, match="local Hugging Face cache"):
        metrics.Dinov2("facebook/dinov2-giant")
    assert fake.calls == [("AutoImageProcessor", "facebook/dinov2-giant", {"local_files_only": True})]
    with pytest.raises(metrics.FeaturesUnavailable):
        metrics.Dinov2("facebook/dinov2-giant", allow_download=True)
    assert fake.calls[-1][2] == {"local_files_only": False}


def test_dinov2_features_are_the_cls_token(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", FakeTransformers())
    name, extract = metrics.feature_extractor("dinov2", note=pytest.fail)
    assert name == "dinov2"
    red, green = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 255, 0))
    features = extract([red, green, red], batch=2)
    assert np.allclose(features, [[255, 0, 0], [0, 255, 0], [255, 0, 0]])
    assert metrics.diversity(features) == pytest.approx(1 - 1 / 3)


def test_missing_transformers_means_dinov2_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(metrics.FeaturesUnavailable, match="transformers is not installed"):
        metrics.Dinov2()


def write_images(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")


def test_cli_prints_diversity_and_div_x_per_folder(tmp_path, capsys):
    write_images(tmp_path / "same", [gradient()] * 3)
    write_images(tmp_path / "mixed", [gradient(), gradient(flip=True)])
    with open(tmp_path / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "score"])
        writer.writerows([["same/0.png", 4], ["same/1.png", 5], ["same/2.png", ""],
                          ["mixed/0.png", 2], ["mixed/1.png", 3]])
    status = metrics.main(["diversity", str(tmp_path / "same"), str(tmp_path / "mixed"), "--features", "pixels",
                           "--scores", str(tmp_path / "scores.csv")])
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert status == 0
    assert lines[0] == ["folder", "images", "features", "diversity", "mean_score", "div_x"]
    assert lines[1][1:] == ["3", "pixels", "0.0000", "4.5000", "0.0000"]
    assert lines[2][1:] == ["2", "pixels", "2.0000", "2.5000", "5.0000"]


def test_cli_refuses_a_folder_with_one_image(tmp_path, capsys):
    write_images(tmp_path / "one", [gradient()])
    assert metrics.main(["diversity", str(tmp_path / "one"), "--features", "pixels"]) == 1
    assert "at least 2 images" in capsys.readouterr().err


def test_read_scores_needs_a_file_and_a_score_column(tmp_path):
    (tmp_path / "bad.csv").write_text("name,value\na.png,3\n")
    with pytest.raises(ValueError, match="file"):
        metrics.read_scores(str(tmp_path / "bad.csv"))
    (tmp_path / "good.csv").write_text("path,cps\nsub/a.png,3\n")
    assert metrics.read_scores(str(tmp_path / "good.csv"), "cps") == {str(tmp_path / "sub" / "a.png"): 3.0}
