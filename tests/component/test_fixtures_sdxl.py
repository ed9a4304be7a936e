"""Tier 2: the SDXL fixtures are what each host needs: A1111's narrow sgm model has conditioner
sizes that agree with each other; Forge's checkpoint is what huggingface_guess calls an SDXL
family member, with full-size text encoders; every LoRA module lands on a layer of the right shape."""
import re

import pytest
import safetensors.torch
import torch

from tests.support.fixtures import layouts, models, names
from tests.support.fixtures.layouts import checkpoint_shapes
from tests.support.fixtures.loras import write_loras
from tests.support.fixtures.models import FORGE_SDXL, TINY_SDXL

UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer.text_model."
TE2 = "conditioner.embedders.1.model."


def _yaml_values(text, key):
    return [v.strip() for v in re.findall(rf"^\s*{key}: (.*)$", text, re.M)]


def test_a1111_sdxl_config_and_checkpoint_agree():
    shapes, text = checkpoint_shapes(TINY_SDXL), models.model_yaml(TINY_SDXL)
    context = shapes[TE1 + "final_layer_norm.weight"][0] + shapes[TE2 + "ln_final.weight"][0]
    pooled = shapes[TE2 + "text_projection"][1]
    size_embeddings = 3 * 2 * int(_yaml_values(text, "outdim")[0])
    assert _yaml_values(text, "context_dim") == [str(context)]
    assert {s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")} == {context}
    assert _yaml_values(text, "adm_in_channels") == [str(pooled + size_embeddings)]
    assert shapes[UNET + "label_emb.0.0.weight"][1] == pooled + size_embeddings
    assert _yaml_values(text, "model_channels") == [str(shapes[UNET + "input_blocks.0.0.weight"][0])]
    # FrozenCLIPEmbedder's layer_idx picks a hidden state that exists; A1111 shares one HF cache
    # (openai/clip-vit-large-patch14's config) between its SD1 and SDXL fixtures
    assert int(_yaml_values(text, "layer_idx")[0]) < TINY_SDXL.clip.layers
    assert TINY_SDXL.clip == models.TINY_SD1.clip
    assert len(shapes[UNET + "input_blocks.4.1.proj_in.weight"]) == 2              # SDXL: Linear proj_in
    assert not any(k.startswith(UNET + "input_blocks.1.1.") for k in shapes)    # no attention at level 0
    assert UNET + "input_blocks.7.1.transformer_blocks.1.attn1.to_q.weight" in shapes


def test_a1111_open_clip_architecture_has_the_checkpoints_text_tower():
    """A1111 builds the second text encoder from an open_clip model name, then loads the weights."""
    open_clip = pytest.importorskip("open_clip", reason="needs open-clip-torch (a WebUI venv has it)")
    text_cfg = open_clip.get_model_config(TINY_SDXL.open_clip.name)
    arch = TINY_SDXL.open_clip
    assert (text_cfg["text_cfg"]["width"], text_cfg["text_cfg"]["layers"], text_cfg["embed_dim"]) == \
        (arch.width, arch.layers, arch.embed_dim)
    assert f"arch: {arch.name}" in models.model_yaml(TINY_SDXL)


def _forge_unet_config(shapes):
    """The parts of huggingface_guess' detect_unet_config that model_list's SDXL family matches on."""
    depth, n = [], 1
    while any(k.startswith(f"{UNET}input_blocks.{n}.") for k in shapes):
        if f"{UNET}input_blocks.{n}.0.in_layers.0.weight" in shapes:
            depth.append(sum(1 for k in shapes if re.fullmatch(
                rf"{re.escape(UNET)}input_blocks\.{n}\.1\.transformer_blocks\.\d+\.norm1\.weight", k)))
        n += 1
    first = next(k for k in shapes if k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in shapes if k.endswith("1.proj_in.weight"))
    return {"model_channels": shapes[UNET + "input_blocks.0.0.weight"][0], "transformer_depth": depth,
            "context_dim": shapes[first][1], "adm_in_channels": shapes[UNET + "label_emb.0.0.weight"][1],
            "use_linear_in_transformer": len(shapes[proj_in]) == 2}


def test_forge_checkpoint_is_what_forge_detects_as_an_sdxl_family_member():
    shapes = checkpoint_shapes(FORGE_SDXL)
    # huggingface_guess model_list.Segmind_Vega (a subclass of SDXL, so Forge's SDXL engine)
    assert _forge_unet_config(shapes) == {"model_channels": 320, "transformer_depth": [0, 0, 1, 1, 2, 2],
                                          "context_dim": 2048, "adm_in_channels": 2816,
                                          "use_linear_in_transformer": True}
    # Forge builds CLIP-L, OpenCLIP bigG (as CLIPTextModelWithProjection) and the VAE from its
    # bundled SDXL configs: full size (openai/clip-vit-large-patch14's text model; SDXL's
    # text_encoder_2 plus open_clip's logit_scale; SDXL's VAE)
    assert layouts.parameter_count(shapes, TE1) == 123_060_480
    assert layouts.parameter_count(shapes, TE2) == 694_659_840 + 1
    assert shapes[TE2 + "transformer.resblocks.31.attn.in_proj_weight"] == (3 * 1280, 1280)
    assert layouts.parameter_count(shapes, "first_stage_model.") == 83_653_863
    assert layouts.parameter_count(shapes, UNET) < 120_000_000                 # the one part that shrinks


def _target_shapes(shapes):
    """kohya module name -> shape of the weight it changes, by the hosts' rules: UNet layers by ldm
    path, te1 by Hugging Face CLIP names, te2 (OpenCLIP) q/k/v as thirds of in_proj, c_fc/c_proj as
    fc1/fc2 (Forge converts the tower to Hugging Face names, A1111 maps the names onto it)."""
    targets = {}
    for key, shape in shapes.items():
        if key.startswith(UNET) and key.endswith(".weight"):
            targets["lora_unet_" + key[len(UNET):-len(".weight")].replace(".", "_")] = shape
        m = re.fullmatch(re.escape(TE1) + r"encoder\.layers\.(\d+)\.(self_attn\.\w+_proj|mlp\.fc[12])\.weight", key)
        if m:
            targets[f"lora_te1_text_model_encoder_layers_{m[1]}_{m[2].replace('.', '_')}"] = shape
        m = re.fullmatch(re.escape(TE2) + r"transformer\.resblocks\.(\d+)\."
                         r"(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)", key)
        if m:
            te2 = f"lora_te2_text_model_encoder_layers_{m[1]}_"
            if m[2] == "attn.in_proj_weight":
                targets.update({f"{te2}self_attn_{n}_proj": (shape[0] // 3, shape[1]) for n in "qkv"})
            else:
                part = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1",
                        "mlp.c_proj.weight": "mlp_fc2"}[m[2]]
                targets[te2 + part] = shape
    return targets


def _delta_shape(tensors, module):
    if f"{module}.lora_up.weight" in tensors:
        up, down = tensors[f"{module}.lora_up.weight"], tensors[f"{module}.lora_down.weight"]
        return (up.shape[0],) + tuple(down.shape[1:])
    w1, w2_a, w2_b = (tensors[f"{module}.lokr_{n}"] for n in ("w1", "w2_a", "w2_b"))
    return (w1.shape[0] * w2_a.shape[0], w1.shape[1] * w2_b.shape[1])


@pytest.mark.parametrize("ckpt", [TINY_SDXL, FORGE_SDXL], ids=["a1111", "forge"])
def test_sdxl_loras_match_layers_of_both_text_encoders_and_the_unet(tmp_path, ckpt):
    shapes = checkpoint_shapes(ckpt)
    first = write_loras(tmp_path / "a", ckpt)
    assert [p.stem for p in first] == [*names.LORAS["sdxl"], names.SDXL_TE2_ONLY]
    targets = _target_shapes(shapes)
    modules = {}
    for path in first:
        tensors = safetensors.torch.load_file(path)
        modules[path.stem] = {key.partition(".")[0] for key in tensors}
        for module in modules[path.stem]:
            assert module in targets, f"{path.name}: no layer for {module}"
            assert _delta_shape(tensors, module) == targets[module], module
    lora, lokr, unet_only = (modules[n] for n in names.LORAS["sdxl"])
    te2_only = modules[names.SDXL_TE2_ONLY]
    te_layers = 6 * ckpt.clip.layers, 6 * ckpt.open_clip.layers
    assert (sum(m.startswith("lora_te1_") for m in lora), sum(m.startswith("lora_te2_") for m in lora)) == te_layers
    assert any(m.endswith("_in_layers_2") for m in lora) and any("_ff_net_" in m for m in lora)
    assert any("_transformer_blocks_1_" in m for m in lora) and any("middle_block" in m for m in lora)
    assert lokr and all(m.startswith("lora_unet_") for m in lokr)
    assert not any(m.startswith("lora_te") or "output_blocks" in m for m in unet_only)
    assert len(te2_only) == te_layers[1] and all(m.startswith("lora_te2_") for m in te2_only)
    second = write_loras(tmp_path / "b", ckpt)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_lokr_update_is_about_the_size_of_the_weight(tmp_path):
    path = write_loras(tmp_path, TINY_SDXL)[1]
    tensors = safetensors.torch.load_file(path)
    module = next(k.partition(".")[0] for k in tensors if k.endswith("lokr_w1"))
    w1, w2_a, w2_b = (tensors[f"{module}.lokr_{n}"] for n in ("w1", "w2_a", "w2_b"))
    rank, alpha = w2_b.shape[0], float(tensors[f"{module}.alpha"])
    delta = torch.kron(w1, w2_a @ w2_b) * alpha / rank
    weight_std = 1 / delta.shape[1] ** 0.5      # the checkpoint's linear init
    assert 0.5 < float(delta.std()) / weight_std < 2
