"""Tier 1: the toy demo, reduced to a few seconds: deterministic, a valid PNG, the extension's guidance core."""
import copy
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lib_autolora.core import guidance
from lib_autolora.tools import demo, demo_drawing, toy_model

SMALL = demo.DemoConfig(base_steps=150, lora_steps=40, batch=128, hidden=32, samples=48, sampling_steps=6,
                        lora_weights=(0.7, 1.0))


@pytest.fixture(scope="module")
def small_run():
    return demo.run(SMALL)


def test_same_seed_gives_the_same_numbers_and_points(small_run):
    again = demo.run(SMALL)
    assert [s.figures for s in again.sets] == [s.figures for s in small_run.sets]
    assert all(np.array_equal(a.points, b.points) for a, b in zip(again.sets, small_run.sets))
    assert np.array_equal(again.few, small_run.few)
    other = demo.run(demo.DemoConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(other.sets[0].points, small_run.sets[0].points)


def test_one_sample_set_per_sampler_and_weight(small_run):
    assert [(s.method, s.lora_weight) for s in small_run.sets] == [
        ("base + CFG", 0.0), ("LoRA + CFG", 0.7), ("AutoLoRA", 0.7), ("LoRA + CFG", 1.0), ("AutoLoRA", 1.0)]
    assert all(s.points.shape == (SMALL.samples, 2) and np.isfinite(s.points).all() for s in small_run.sets)
    assert small_run.few.shape == (SMALL.lora_points, 2)
    for s in small_run.sets:
        f = s.figures
        assert 0 <= f["on_domain"] <= 1 and 0 <= f["coverage"] <= 1 and 0 <= f["near_train"] <= 1
        assert f["div_on"] == pytest.approx(f["diversity"] * f["on_domain"])
    panels = small_run.panels()
    assert [p.method for p in panels] == ["base + CFG", "LoRA + CFG", "AutoLoRA"]
    for panel in panels[1:]:
        assert panel.figures["div_on"] == max(s.figures["div_on"] for s in small_run.sets if s.method == panel.method)


def test_writes_one_png_with_three_panels(small_run, tmp_path):
    path = tmp_path / "demo.png"
    demo_drawing.draw(small_run, path, size=200)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == 3 * 200
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == demo_drawing.SAMPLE_BLUE).all(axis=2).any()  # samples were drawn
    assert (pixels == demo_drawing.LORA_RED).all(axis=2).any()  # the LoRA's points were marked


def test_cli_prints_the_table_and_a_verdict(tmp_path, capsys):
    out = tmp_path / "cli.png"
    demo.main(["--out", str(out), "--base-steps", "100", "--lora-steps", "20", "--batch", "64", "--hidden", "32",
               "--samples", "32", "--sampling-steps", "4", "--lora-weights", "0.8,1.2", "--cfg", "2"])
    text = capsys.readouterr().out
    assert out.exists()
    assert "CFG 2; AutoLoRA gamma 1.5, w1 2, w2 2" in text
    assert "| LoRA + CFG" in text and "| AutoLoRA" in text
    assert re.search(r"^ +0.8\|.*\|", text, re.M) and re.search(r"^ +1.2\|.*\|", text, re.M)  # a row per weight
    assert "the paper's claim" in text and ("HOLDS here" in text or "does NOT hold here" in text)


def set_of(method, diversity, on_domain):
    figures = {"diversity": diversity, "on_domain": on_domain, "coverage": 0.5, "near_train": 0.5,
               "div_on": diversity * on_domain}
    return demo.SampleSet(method, 1.0, np.zeros((2, 2)), figures)


def test_verdict_says_when_the_claim_does_not_hold():
    lora = set_of("LoRA + CFG", 0.70, 0.95)
    assert "HOLDS here" in demo.verdict(lora, set_of("AutoLoRA", 0.75, 0.90))
    less_diverse = demo.verdict(lora, set_of("AutoLoRA", 0.65, 0.99))
    assert "does NOT hold here" in less_diverse and "not more diverse" in less_diverse
    off_domain = demo.verdict(lora, set_of("AutoLoRA", 0.80, 0.50))
    assert "does NOT hold here" in off_domain and "not mostly" in off_domain


def test_autolora_sampler_uses_the_extension_core(monkeypatch):
    calls = {"cfg": 0, "autolora": []}
    real_cfg, real_autolora = guidance.cfg, guidance.autolora

    def counting_cfg(uncond, cond, scale):
        calls["cfg"] += 1
        return real_cfg(uncond, cond, scale)

    def recording_autolora(base, lora, gamma):
        calls["autolora"].append(gamma)
        return real_autolora(base, lora, gamma)

    monkeypatch.setattr(guidance, "cfg", counting_cfg)
    monkeypatch.setattr(guidance, "autolora", recording_autolora)
    config = demo.DemoConfig(**{**SMALL.__dict__, "gamma": 1.75, "lora_weights": (1.0,)})
    demo.run(config)
    steps = config.sampling_steps
    assert calls["autolora"] == [1.75] * steps       # every AutoLoRA step, nowhere else
    assert calls["cfg"] == steps * (1 + 1 + 2)          # base, LoRA + CFG, AutoLoRA's two


def test_autolora_denoiser_is_algorithm_2_with_the_lora_off_for_the_base_pass():
    torch.manual_seed(0)
    model = toy_model.Denoiser(hidden=16, sigma_data=1.0)
    base = copy.deepcopy(model)
    model.add_lora(rank=2, generator=torch.Generator().manual_seed(0))
    for layer in model.lora_layers():
        torch.nn.init.normal_(layer.up)  # a LoRA that changes something
    x, sigma = torch.randn(5, 2), torch.tensor(0.7)
    labels = torch.tensor([toy_model.NO_LABEL] * 5 + [toy_model.RING] * 5)
    with torch.no_grad():
        bu, bc = base(torch.cat([x, x]), sigma.expand(10, 1), labels).split(5)
        with model.lora(0.8):
            lu, lc = model(torch.cat([x, x]), sigma.expand(10, 1), labels).split(5)
    assert torch.equal(torch.stack(demo.predict(model, x, sigma, 0.0)), torch.stack([bu, bc]))  # LoRA off = base
    assert not torch.allclose(lu, bu)
    w1, w2, gamma = 2.0, 3.0, 1.5
    expected = (bu + w1 * (bc - bu)) + gamma * ((lu + w2 * (lc - lu)) - (bu + w1 * (bc - bu)))
    got = demo.autolora_denoiser(model, 0.8, w1, w2, gamma)(x, sigma)
    assert torch.allclose(got, expected, atol=1e-6)
    assert all(layer.weight == 0.0 for layer in model.lora_layers())  # the switch leaves the LoRA off after
