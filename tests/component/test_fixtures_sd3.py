"""Tier 2: the SD3 fixtures have what A1111 and Forge size an MMDiT by, the text encoders each host
needs from the file, and a LoRA both hosts' loaders take."""
import safetensors.torch

from tests.support.fixtures import models, names
from tests.support.fixtures.layouts import checkpoint_shapes, parameter_count
from tests.support.fixtures.loras import write_loras
from tests.support.fixtures.models import FORGE_SD3, TINY_SD3

MMDIT = "model.diffusion_model."
CLIP_L, CLIP_G = "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer."


def test_mmdit_has_the_shapes_both_hosts_read():
    for ckpt in (TINY_SD3, FORGE_SD3):
        shapes = checkpoint_shapes(ckpt)
        hidden, channels, patch, _ = shapes[MMDIT + "x_embedder.proj.weight"]
        depth = hidden // 64
        assert (channels, patch, hidden) == (16, 2, 64 * depth)
        assert shapes[MMDIT + "context_embedder.weight"][1] == 4096
        assert shapes[MMDIT + "y_embedder.mlp.0.weight"][1] == 768 + 1280              # pooled CLIP-L + CLIP-G
        assert shapes[MMDIT + "pos_embed"][1] != 384 ** 2                              # 384: Forge's SD3.5-M
        assert {int(k.split(".")[3]) for k in shapes if ".joint_blocks." in k} == set(range(depth))
        assert f"{MMDIT}joint_blocks.{depth - 1}.context_block.attn.proj.weight" not in shapes  # pre-only
        assert models.model_yaml(ckpt) is None       # A1111 would prefer a .yaml over recognising SD3


def test_each_host_gets_the_text_encoder_weights_it_needs():
    tiny, forge = checkpoint_shapes(TINY_SD3), checkpoint_shapes(FORGE_SD3)
    for prefix in (CLIP_L, CLIP_G):   # A1111 downloads an encoder whose position embedding is missing
        assert prefix + "text_model.embeddings.position_embedding.weight" in tiny
        assert prefix + "text_projection.weight" in tiny
    assert not any(".encoder.layers." in k for k in tiny)
    # Forge runs every CLIP layer from the file (CLIPTextModelWithProjection sizes) and wants >16 T5 keys
    assert parameter_count(forge, CLIP_L) == 123_060_480 + 768 * 768
    assert parameter_count(forge, CLIP_G) == 694_659_840
    assert 16 < sum(k.startswith("text_encoders.t5xxl.") for k in forge) < 60


def test_lora_has_no_alpha_and_lands_on_joint_block_layers(tmp_path):
    shapes = checkpoint_shapes(TINY_SD3)
    (path,) = write_loras(tmp_path, TINY_SD3)
    assert path.stem == names.LORAS["sd3"][0]
    tensors = safetensors.torch.load_file(path)
    assert all(key.count(".") == 2 for key in tensors)      # A1111 splits every SD3 LoRA key in three
    modules = {key.partition(".")[0] for key in tensors}
    assert len(modules) == 4 * 2 * 2 - 3                     # 2 blocks x 2 streams x 4 layers, pre-only end
    for module in modules:
        key = MMDIT + module[len("lora_unet_"):].replace("_", ".")
        key = key.replace("joint.blocks", "joint_blocks").replace("context.block", "context_block")
        key = key.replace("x.block", "x_block") + ".weight"
        up, down = tensors[f"{module}.lora_up.weight"], tensors[f"{module}.lora_down.weight"]
        assert (up.shape[0], down.shape[1]) == shapes[key], module
