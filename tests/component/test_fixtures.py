"""Tier 2: the live-test fixtures are deterministic, in the kohya layout, and avoid the pitfalls
that make random-weight models useless (NaN conditioning, constant UNet output)."""
import re

import safetensors.torch
import torch

from tests.support.fixtures import layouts, names
from tests.support.fixtures.hf_cache import write_hf_t5_tokenizer_cache
from tests.support.fixtures.layouts import checkpoint_shapes, checkpoint_state_dict
from tests.support.fixtures.loras import unet_blocks, write_loras
from tests.support.fixtures.models import FORGE_SD15, TINY_SD1
from tests.support.fixtures.tensors import save_safetensors, save_spec


def test_streamed_checkpoint_is_the_file_of_its_tensors(tmp_path):
    spec, extra = TINY_SD1.spec(), TINY_SD1.extra_tensors()
    save_spec(spec, tmp_path / "streamed.safetensors", 7, torch.float16, extra, {"format": "pt"})
    whole = checkpoint_state_dict(TINY_SD1, 7, torch.float16)
    save_safetensors(whole, tmp_path / "whole.safetensors", {"format": "pt"})
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    loaded = safetensors.torch.load_file(tmp_path / "streamed.safetensors")
    assert loaded.keys() == checkpoint_shapes(TINY_SD1).keys()


def test_checkpoint_avoids_nan_conditioning_and_constant_output():
    sd = checkpoint_state_dict(TINY_SD1)
    assert sd["cond_stage_model.transformer.text_model.final_layer_norm.bias"].abs().mean() > 0.1
    for key in ("model.diffusion_model.out.2.weight", "model.diffusion_model.input_blocks.1.1.proj_out.weight"):
        assert sd[key].abs().max() > 0, f"{key} must not be zero-initialised"
    assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())


def test_lora_files_are_kohya_layout_and_byte_identical_between_runs(tmp_path):
    first = write_loras(tmp_path / "a", TINY_SD1)
    second = write_loras(tmp_path / "b", TINY_SD1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    parts = {"lora_down.weight", "lora_up.weight", "alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
    layers = {}
    for path in first:
        tensors = safetensors.torch.load_file(path)
        for key in tensors:
            layer, _, part = key.partition(".")
            assert re.fullmatch(r"lora_(unet|te)_[a-z0-9_]+", layer) and part in parts, key
        layers[path.stem] = {key.partition(".")[0] for key in tensors}
    lora, _, unet_only = names.LORAS["sd1"]
    assert any(layer.startswith("lora_te_") for layer in layers[lora])
    assert not any(layer.startswith("lora_te_") for layer in layers[unet_only])
    assert any("hada_w1_a" in key for key in safetensors.torch.load_file(first[1]))


# --- Forge (tests/support/make_fixtures.py OUT_DIR --host forge) ----------------------------
# Forge builds its model from the state dict alone, so these check what its SD1.5 guess reads
# (shapes only: the 232M-parameter checkpoint itself is not made here).

UNET = "model.diffusion_model."
TE = "cond_stage_model.transformer.text_model."


def test_forge_checkpoint_is_what_forge_detects_as_sd15():
    shapes = checkpoint_shapes(FORGE_SD15)
    assert shapes[UNET + "input_blocks.0.0.weight"][0] == 320                  # model_channels
    context = {shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")}
    assert context == {768}                                                      # context_dim
    assert len(shapes[UNET + "input_blocks.1.1.proj_in.weight"]) == 4           # SD1: conv proj_in
    assert not any(key.startswith(UNET + "label_emb") for key in shapes)
    # Forge makes CLIP-L and the SD1.5 VAE from its bundled configs: they must be full size
    # (parameter counts of openai/clip-vit-large-patch14's text model and the SD1.5 VAE).
    assert shapes[TE + "embeddings.token_embedding.weight"] == (49408, 768)
    assert {key.split(".")[5] for key in shapes if ".encoder.layers." in key} == {str(i) for i in range(12)}
    assert layouts.parameter_count(shapes, TE) == 123_060_480
    assert layouts.parameter_count(shapes, "first_stage_model.") == 83_653_863
    assert layouts.parameter_count(shapes, UNET) < 30_000_000                   # the one part that shrinks
    # the pitfalls of random weights are handled here as for A1111
    init = {key: kind for key, (_, kind) in FORGE_SD15.spec().entries.items()}
    assert init[TE + "final_layer_norm.bias"] == "final_ln_bias"
    assert init[UNET + "out.2.weight"] != "zeros" and init[UNET + "middle_block.1.proj_out.weight"] != "zeros"


def _forge_lora_names(shapes):
    """kohya module name -> checkpoint weight key, derived the way Forge does it (ComfyUI's
    unet_to_diffusers over the levels found in the keys, and its CLIP map): not from
    the fixtures' own tables."""
    down = [[]]                    # per level: one has-attention flag per res block
    n = 1
    while f"{UNET}input_blocks.{n}.0.in_layers.2.weight" in shapes or f"{UNET}input_blocks.{n}.0.op.weight" in shapes:
        if f"{UNET}input_blocks.{n}.0.op.weight" in shapes:
            down.append([])
        else:
            down[-1].append(f"{UNET}input_blocks.{n}.1.proj_in.weight" in shapes)
        n += 1
    resnet = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}
    prefixes = []                  # (diffusers block, ldm block, kind)
    for x, flags in enumerate(down):
        for i, attn in enumerate(flags):
            ldm = f"input_blocks.{1 + (len(flags) + 1) * x + i}"
            prefixes.append((f"down_blocks.{x}.resnets.{i}", f"{ldm}.0", resnet))
            if attn:
                prefixes.append((f"down_blocks.{x}.attentions.{i}", f"{ldm}.1", None))
    prefixes += [("mid_block.resnets.0", "middle_block.0", resnet), ("mid_block.attentions.0", "middle_block.1", None),
                 ("mid_block.resnets.1", "middle_block.2", resnet)]
    for x, flags in enumerate(reversed(down)):
        for i in range(len(flags) + 1):
            ldm = f"output_blocks.{(len(flags) + 1) * x + i}"
            prefixes.append((f"up_blocks.{x}.resnets.{i}", f"{ldm}.0", resnet))
            if f"{UNET}{ldm}.1.proj_in.weight" in shapes:
                prefixes.append((f"up_blocks.{x}.attentions.{i}", f"{ldm}.1", None))
    names = {}
    for diffusers, ldm, sub in prefixes:
        for key in shapes:
            if key.startswith(f"{UNET}{ldm}.") and key.endswith(".weight"):
                part = key[len(f"{UNET}{ldm}."):-len(".weight")]
                if sub is None and not part.startswith("norm"):
                    names[f"lora_unet_{diffusers}.{part}".replace(".", "_")] = key
                elif sub is not None and part in sub.values():
                    diff = {v: k for k, v in sub.items()}[part]
                    names[f"lora_unet_{diffusers}.{diff}".replace(".", "_")] = key
    for key in shapes:
        m = re.fullmatch(re.escape(TE) + r"encoder\.layers\.(\d+)\."
                         r"(self_attn\.[qkv]_proj|self_attn\.out_proj|mlp\.fc[12])\.weight", key)
        if m:
            names[f"lora_te_text_model_encoder_layers_{m[1]}_{m[2].replace('.', '_')}"] = key
    return names


def _assert_same_blocks_as_forge(ckpt, forge_names):
    """The fixtures' diffusers -> ldm block table is the one Forge uses (shapes alone
    cannot tell apart e.g. two output blocks of one level)."""
    for kohya, ldm, kind in unet_blocks(ckpt):
        name, key = ("proj_in", "proj_in") if kind == "attn" else ("conv1", "in_layers.2")
        assert forge_names[f"lora_unet_{kohya}_{name}"] == f"model.{ldm}.{key}.weight", kohya


def _delta_shape(tensors, module):
    if f"{module}.lora_up.weight" in tensors:
        up, down = tensors[f"{module}.lora_up.weight"], tensors[f"{module}.lora_down.weight"]
        return (up.shape[0],) + tuple(down.shape[1:])
    return (tensors[f"{module}.hada_w1_a"].shape[0], tensors[f"{module}.hada_w1_b"].shape[1])


def test_forge_loras_match_every_key_of_forges_model_and_are_byte_identical(tmp_path):
    shapes = checkpoint_shapes(FORGE_SD15)
    first = write_loras(tmp_path / "a", FORGE_SD15)
    second = write_loras(tmp_path / "b", FORGE_SD15)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    forge_names = _forge_lora_names(shapes)
    _assert_same_blocks_as_forge(FORGE_SD15, forge_names)
    modules = {}
    for path in first:
        tensors = safetensors.torch.load_file(path)
        modules[path.stem] = {key.partition(".")[0] for key in tensors}
        for module in modules[path.stem]:
            assert module in forge_names, f"{path.name}: Forge would not match {module}"
            assert _delta_shape(tensors, module) == shapes[forge_names[module]], module
    lora, loha, unet_only = (modules[name] for name in names.LORAS["sd1"])
    # same kinds as the A1111 fixtures (Forge logs these counts: UNet 58 + CLIP 72, 40, 24 keys)
    assert sum(m.startswith("lora_te_") for m in lora) == 72
    assert any(m.endswith("_conv1") for m in lora) and any("_ff_net_" in m for m in lora)
    assert (len(lora), len(loha), len(unet_only)) == (130, 40, 24)
    assert not any(m.startswith("lora_te_") for m in loha | unet_only)
    assert not any(m.startswith("lora_unet_up_") for m in unet_only)


def test_tiny_a1111_loras_match_the_same_diffusers_mapping(tmp_path):
    shapes = checkpoint_shapes(TINY_SD1)
    forge_names = _forge_lora_names(shapes)
    _assert_same_blocks_as_forge(TINY_SD1, forge_names)
    for path in write_loras(tmp_path, TINY_SD1):
        tensors = safetensors.torch.load_file(path)
        for module in {key.partition(".")[0] for key in tensors}:
            assert _delta_shape(tensors, module) == shapes[forge_names[module]], module


def test_hf_cache_is_marked_with_transformers_cache_layout(tmp_path):
    # transformers reads HF_HOME/hub/version.txt; below 1 it warns on start that the cache "has been
    # updated" and tries to migrate it.
    snapshot = write_hf_t5_tokenizer_cache(tmp_path)
    assert (tmp_path / "hub" / "version.txt").read_text() == "1"
    assert (snapshot / "tokenizer.json").is_file()
    ref = snapshot.parent.parent / "refs" / "main"
    assert ref.read_text() == snapshot.name
