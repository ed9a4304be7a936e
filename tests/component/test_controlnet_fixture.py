"""Tier 2: the ControlNet fixtures have the shapes each host's loader reads and each fixture UNet
takes, are not the no-op a zero-initialised ControlNet is, and are the same bytes on every run."""
import itertools

import pytest
import safetensors.torch

from tests.support import controlnet_fixture as cn
from tests.support.fixtures.layouts import checkpoint_shapes
from tests.support.fixtures.models import FORGE_SD15, TINY_SD1, model_yaml

UNET = "model.diffusion_model."
SD15_SKIP_WIDTHS = [320] * 4 + [640] * 3 + [1280] * 5  # SD1.5's input blocks, what Mikubill's ControlNet outputs


def _shapes(arch):
    return {name: shape for name, (shape, _) in cn.controlnet_spec(arch).entries.items()}


def _unet_block_widths(checkpoint):
    """Output channels of the checkpoint UNet's input blocks (conv_in, res block or downsample)."""
    widths = []
    for n in itertools.count():
        prefix = f"{UNET}input_blocks.{n}.0."
        found = [prefix + part for part in ("weight", "out_layers.3.weight", "op.weight")
                 if prefix + part in checkpoint]
        if not found:
            return widths
        widths.append(checkpoint[found[0]][0])


@pytest.mark.parametrize("controlnet, checkpoint",
                         [(FORGE_SD15.unet, FORGE_SD15), (cn.A1111_CONTROLNET, cn.A1111_SD15_WIDTHS)],
                         ids=["forge", "a1111"])
def test_each_controlnet_output_fits_the_fixture_unet(controlnet, checkpoint):
    shapes = _shapes(controlnet)
    checkpoint = checkpoint_shapes(checkpoint)
    widths = _unet_block_widths(checkpoint)
    assert [shapes[f"zero_convs.{i}.0.weight"][0] for i in range(len(widths))] == widths
    assert f"zero_convs.{len(widths)}.0.weight" not in shapes
    assert shapes["middle_block_out.0.weight"][0] == checkpoint[f"{UNET}middle_block.2.out_layers.3.weight"][0]
    for name, shape in shapes.items():  # the encoder is the UNet's, where the UNet has that layer
        if name.startswith(("input_blocks.", "middle_block.")) and f"{UNET}{name}" in checkpoint:
            assert checkpoint[f"{UNET}{name}"] == shape, name


def test_the_forge_controlnet_mirrors_the_forge_unet_encoder():
    """Forge reads the ControlNet's topology from its keys, so they must be the UNet encoder's, all of them."""
    shapes = _shapes(FORGE_SD15.unet)
    checkpoint = checkpoint_shapes(FORGE_SD15)
    encoder = {name[len(UNET):]: shape for name, shape in checkpoint.items()
               if name.startswith(tuple(UNET + part for part in ("time_embed.", "input_blocks.", "middle_block.")))}
    assert {name: shape for name, shape in shapes.items() if name in encoder} == encoder


def test_the_a1111_controlnet_is_what_mikubills_loader_builds():
    """Its loader takes only the context width and the hint channels from the file: the rest must be
    SD1.5's ControlNet, and the checkpoint's UNet must have SD1.5's widths to take its outputs."""
    shapes = _shapes(cn.A1111_CONTROLNET)
    assert [shapes[f"zero_convs.{i}.0.weight"][0] for i in range(12)] == SD15_SKIP_WIDTHS
    assert shapes["input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"][1] == TINY_SD1.unet.context_dim
    assert shapes["input_hint_block.0.weight"][1] == 3
    assert {shape[1] for name, shape in shapes.items() if name.endswith("attn2.to_k.weight")} == {64}
    assert "input_blocks.7.1.proj_in.weight" in shapes and "input_blocks.10.1.proj_in.weight" not in shapes
    yaml = model_yaml(cn.A1111_SD15_WIDTHS)
    assert "model_channels: 320\n" in yaml and "attention_resolutions: [  ]" in yaml


def test_the_control_is_not_a_no_op_and_files_repeat(tmp_path):
    arch = TINY_SD1.unet  # the same layout as the hosts' ones, narrow enough to write twice quickly
    first = cn.write_controlnet(tmp_path / "a", arch)
    second = cn.write_controlnet(tmp_path / "b", arch)
    assert first.read_bytes() == second.read_bytes()
    tensors = safetensors.torch.load_file(first)
    outputs = [name for name in tensors if name.startswith(("zero_convs.", "middle_block_out.", "input_hint_block.14"))]
    assert len(outputs) == 2 * 14  # weight and bias of 12 zero convs, the middle one and the hint's last conv
    assert all(tensors[name].abs().min() > 0 for name in outputs if name.endswith("weight"))
