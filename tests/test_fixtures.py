"""Tier 2: the live-test fixtures are deterministic, in the kohya layout, and avoid the pitfalls
that make random-weight models useless (NaN conditioning, constant UNet output)."""
import re

import safetensors.torch
import torch

import make_fixtures


def test_checkpoint_avoids_nan_conditioning_and_constant_output():
    sd = make_fixtures.checkpoint_state_dict()
    assert sd["cond_stage_model.transformer.text_model.final_layer_norm.bias"].abs().mean() > 0.1
    for key in ("model.diffusion_model.out.2.weight", "model.diffusion_model.input_blocks.1.1.proj_out.weight"):
        assert sd[key].abs().max() > 0, f"{key} must not be zero-initialised"
    assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())


def test_lora_files_are_kohya_layout_and_byte_identical_between_runs(tmp_path):
    shapes = {k: tuple(v.shape) for k, v in make_fixtures.checkpoint_state_dict().items()}
    first = make_fixtures.write_loras(tmp_path / "a", shapes)
    second = make_fixtures.write_loras(tmp_path / "b", shapes)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    parts = {"lora_down.weight", "lora_up.weight", "alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
    layers = {}
    for path in first:
        tensors = safetensors.torch.load_file(path)
        for key in tensors:
            layer, _, part = key.partition(".")
            assert re.fullmatch(r"lora_(unet|te)_[a-z0-9_]+", layer) and part in parts, key
        layers[path.stem] = {key.partition(".")[0] for key in tensors}
    assert any(layer.startswith("lora_te_") for layer in layers["autolora_test_lora"])
    assert not any(layer.startswith("lora_te_") for layer in layers["autolora_test_unet_only"])
    assert any("hada_w1_a" in key for key in safetensors.torch.load_file(first[1]))
