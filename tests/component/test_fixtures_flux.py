"""Tier 2: the Flux and Chroma fixtures have what the Forge Neo line recognises them by (its vendored
huggingface_guess detection and backend loader, WebUI-Neo-Forge 7862a964), their float8 variant is stored
as the host detects float8, and every key of their LoRA files lands on a layer of the right shape by the
host's key maps (kohya `lora_unet_`/`lora_te1_` names, diffusers names into Flux's fused layers)."""
import re

import pytest
import safetensors.torch
import torch

from tests.support.fixtures import models, names
from tests.support.fixtures.flux import HIDDEN, MLP, T5_FULL, t5_spec
from tests.support.fixtures.layouts import checkpoint_shapes, parameter_count
from tests.support.fixtures.loras import PEFT_DOUBLE, PEFT_SINGLE, write_loras
from tests.support.fixtures.tensors import ParamSpec, save_safetensors

UNET = "model.diffusion_model."
CLIP_L = "text_encoders.clip_l.transformer.text_model."
T5 = "text_encoders.t5xxl.transformer."


def blocks(shapes, kind):
    return {int(m.group(1)) for key in shapes if (m := re.match(rf"{UNET}{kind}\.(\d+)\.", key))}


@pytest.mark.parametrize("ckpt", [models.FLUX, models.FLUX_FP8, models.CHROMA], ids=lambda c: c.name)
def test_the_host_counts_one_double_and_one_single_block_at_the_real_width(ckpt):
    shapes = checkpoint_shapes(ckpt)
    assert UNET + "double_blocks.0.img_attn.norm.key_norm.scale" in shapes            # Flux-shaped
    assert shapes[UNET + "img_in.weight"] == (HIDDEN, 64)                            # 16 channels, 2 x 2 patches
    assert blocks(shapes, "double_blocks") == {0} and blocks(shapes, "single_blocks") == {0}
    assert shapes[UNET + "single_blocks.0.linear1.weight"] == (3 * HIDDEN + MLP, HIDDEN)
    assert shapes[UNET + "txt_in.weight"] == (HIDDEN, 4096)                           # T5-XXL's width
    chroma = UNET + "distilled_guidance_layer.norms.0.scale" in shapes
    assert chroma == (ckpt.kind == "chroma")
    assert (UNET + "guidance_in.in_layer.weight" in shapes) == (ckpt.kind == "flux")  # Flux-dev, not schnell
    assert (UNET + "double_blocks.0.img_mod.lin.weight" in shapes) == (not chroma)   # Chroma: its approximator
    assert (CLIP_L + "final_layer_norm.weight" in shapes) == (ckpt.kind == "flux")
    assert T5 + "encoder.final_layer_norm.weight" in shapes
    assert parameter_count(shapes, UNET) == {"flux": 545_548_096, "chroma": 631_086_912}[ckpt.kind]


def test_t5_keeps_the_shapes_the_host_checks_and_its_real_size_is_available():
    shapes = checkpoint_shapes(models.FLUX)
    assert shapes[T5 + "shared.weight"] == (32128, 4096)
    assert shapes[T5 + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] == (32, 64)
    assert not any(".relative_attention_bias." in k for k in shapes if ".block.0." not in k)
    assert {int(k.split(".")[5]) for k in shapes if ".encoder.block." in k} == set(range(24))
    full = ParamSpec()
    t5_spec(full, T5_FULL)
    full_shapes = {name: shape for name, (shape, _) in full.entries.items()}
    assert parameter_count(full_shapes, T5) == 4_762_310_656   # T5-XXL's encoder
    norms = {k: v for k, v in full_shapes.items() if "norm" in k or "shared" in k or "relative" in k}
    assert all(shapes[k] == v for k, v in norms.items())


def test_the_float8_variant_stores_the_transformer_in_float8_and_nothing_else():
    for name in checkpoint_shapes(models.FLUX_FP8):
        stored = models.FLUX_FP8.dtype_of(name, torch.float16)
        assert (stored == torch.float8_e4m3fn) == name.startswith(UNET), name
        assert models.FLUX.dtype_of(name, torch.float16) in (torch.bfloat16, torch.float16)


def test_bfloat16_and_float8_tensors_are_written_as_safetensors_reads_them(tmp_path):
    values = torch.linspace(-3, 3, 24).reshape(4, 6)
    tensors = {"a": values.to(torch.bfloat16), "b": values.to(torch.float8_e4m3fn), "c": torch.tensor(2.0)}
    save_safetensors(tensors, tmp_path / "t.safetensors")
    loaded = safetensors.torch.load_file(tmp_path / "t.safetensors")
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name].float(), tensor.float())


def kohya_key_map(shapes):
    """kohya module name -> model key, as the host maps them (comfy lora.py's model_lora_keys_unet and
    model_lora_keys_clip): `lora_unet_` + the transformer key with '.' -> '_'; CLIP-L's encoder layers
    `lora_te1_text_model_encoder_layers_N_` + the layer's path with '.' -> '_'."""
    key_map = {}
    for key in shapes:
        if key.startswith(UNET) and key.endswith(".weight"):
            key_map["lora_unet_" + key[len(UNET):-len(".weight")].replace(".", "_")] = key
        if m := re.fullmatch(rf"{re.escape(CLIP_L)}encoder\.layers\.(\d+)\.(.+)\.weight", key):
            key_map[f"lora_te1_text_model_encoder_layers_{m.group(1)}_{m.group(2).replace('.', '_')}"] = key
    return key_map


@pytest.mark.parametrize("ckpt", [models.FLUX, models.CHROMA], ids=lambda c: c.kind)
def test_every_lora_key_lands_on_a_layer_of_its_shape(tmp_path, ckpt):
    shapes = checkpoint_shapes(ckpt)
    key_map = kohya_key_map(shapes)
    paths = write_loras(tmp_path, ckpt)
    assert [p.stem for p in paths] == list(names.LORAS[ckpt.kind])
    peft_rows = {**dict.fromkeys(("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                                  "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out"), HIDDEN),
                 "ff.net.0.proj": MLP, "ff_context.net.0.proj": MLP, "ff.net.2": HIDDEN, "ff_context.net.2": HIDDEN,
                 "proj_mlp": MLP, "proj_out": HIDDEN}
    for path in paths:
        tensors = safetensors.torch.load_file(path)
        modules = {key.rsplit(".", 2)[0] for key in tensors if key.endswith(("down.weight", "lora_A.weight"))}
        modules |= {key.rsplit(".", 1)[0] for key in tensors if key.endswith(".lokr_w1")}
        assert modules, path.stem
        for module in modules:
            if module.startswith("transformer."):   # diffusers/PEFT: lands in a third of qkv, linear1's MLP part
                down, up = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
                name = module.split(".", 3)[3]
                assert name in (PEFT_DOUBLE if ".transformer_blocks." in module else PEFT_SINGLE)
                assert up.shape[0] == peft_rows[name] and down.shape[1] in (HIDDEN, HIDDEN + MLP, MLP), module
                continue
            layer = shapes[key_map[module]]
            if f"{module}.lokr_w1" in tensors:
                w1, w2_a, w2_b = (tensors[f"{module}.lokr_{n}"] for n in ("w1", "w2_a", "w2_b"))
                assert (w1.shape[0] * w2_a.shape[0], w1.shape[1] * w2_b.shape[1]) == layer, module
            else:
                up, down = tensors[f"{module}.lora_up.weight"], tensors[f"{module}.lora_down.weight"]
                assert (up.shape[0], down.shape[1]) == layer, module
    if ckpt.kind == "flux":
        with_clip = safetensors.torch.load_file(paths[0])
        assert sum(k.startswith("lora_te1_") and k.endswith("down.weight") for k in with_clip) == 6 * 12
        assert not any(k.startswith("lora_te1_") for k in safetensors.torch.load_file(paths[2]))
