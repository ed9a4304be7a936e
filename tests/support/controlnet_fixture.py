#!/usr/bin/env python3
"""Make the ControlNet fixtures for the live ControlNet checks (tests/live/test_controlnet.py):
a seeded random-weight ControlNet shaped for each host's fixture UNet, nothing downloaded.

    python tests/support/controlnet_fixture.py OUT_DIR --host forge
    python tests/support/controlnet_fixture.py OUT_DIR --host a1111

--host forge writes ControlNet/autolora_controlnet.safetensors for the Forge fixture checkpoint
(make_fixtures.py --host forge, names.FORGE_SD1): Forge's built-in ControlNet reads the ControlNet's topology from
its keys, so it mirrors that UNet's encoder (320 channels, one level, one res block, attention
there and in the middle, context 768). Start Forge with --controlnet-dir OUT_DIR/ControlNet.

--host a1111 is for Mikubill's sd-webui-controlnet, whose loader builds SD1.5's ControlNet whatever
the file holds (only the context width and the hint channels come from the file) and adds its 13
outputs to the UNet's skip features by position. A1111's tiny fixture UNet (32 channels) cannot take
them, so this writes its own set with SD1.5's UNet widths (320/640/1280, two res blocks per level),
attention only in the middle block to save memory, and the tiny fixture's text encoder and VAE:
Stable-diffusion/autolora-sd15-widths.safetensors (+ .yaml), the three LoRA files of
make_fixtures.py shaped for it in Lora/, hf_home/ and ControlNet/autolora_controlnet.safetensors
(SD1.5's ControlNet at context width 64). Start A1111 with HF_HOME=OUT_DIR/hf_home, --ckpt-dir
OUT_DIR/Stable-diffusion, --lora-dir OUT_DIR/Lora and --controlnet-dir OUT_DIR/ControlNet.

The ControlNet's output convolutions, zero in a trained-from-scratch ControlNet, are random here, so
the control changes the image. Files are written in float16 and are byte-identical between runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# after the path set-up for the CLI
from tests.support.fixtures.hf_cache import write_hf_clip_cache  # noqa: E402
from tests.support.fixtures.layouts import SEED, UNetArch, unet_spec, write_checkpoint  # noqa: E402
from tests.support.fixtures.loras import write_loras  # noqa: E402
from tests.support.fixtures.models import FORGE_SD15, TINY_SD1, model_yaml  # noqa: E402
from tests.support.fixtures.tensors import ParamSpec, materialize, save_safetensors  # noqa: E402

CONTROLNET_NAME = "autolora_controlnet"
CONTROLNET_SEED = SEED + 7
A1111_CKPT_NAME = "autolora-sd15-widths"
HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)  # cldm's input_hint_block; stride 2 at the 3rd, 5th, 7th conv
ENCODER = tuple(f"control_model.{part}." for part in ("time_embed", "input_blocks", "middle_block"))

# What Mikubill's loader builds for an SD1 file (its controlnet_default_config), at A1111's context width
A1111_CONTROLNET = dataclasses.replace(TINY_SD1.unet, channels=320)
# The checkpoint whose UNet can take that ControlNet's outputs: same widths, attention in the middle
# block only; the tiny fixture's text encoder and VAE
A1111_SD15_WIDTHS = dataclasses.replace(TINY_SD1, name=A1111_CKPT_NAME,
                                        unet=dataclasses.replace(A1111_CONTROLNET, depth=(0, 0, 0, 0)))


def input_block_widths(arch: UNetArch):
    """Output channels of each UNet input block, in order: one ControlNet output (zero conv) each."""
    widths = [arch.channels]
    for level, mult in enumerate(arch.ch_mult):
        widths += [arch.channels * mult] * arch.num_res_blocks
        if level != len(arch.ch_mult) - 1:
            widths.append(arch.channels * mult)
    return widths


def controlnet_spec(arch: UNetArch, hint_channels=3):
    """cldm ControlNet parameter names: the UNet's encoder and middle, the hint encoder and the
    per-block output convs, with non-zero inits throughout."""
    unet = ParamSpec()
    unet_spec(unet, arch, p="control_model")
    spec = ParamSpec()
    for name, (shape, init) in unet.entries.items():
        if name.startswith(ENCODER):
            spec.add(name.removeprefix("control_model."), shape, init)
    channels = (hint_channels,) + HINT_CHANNELS + (arch.channels,)
    for i in range(len(channels) - 1):
        # every other conv sharper: with plain inits the hint fades through the eight SiLU layers
        spec.conv(f"input_hint_block.{2 * i}", channels[i + 1], channels[i], 3, init="w" if i % 2 else "sharp")
    for i, width in enumerate(input_block_widths(arch)):
        spec.conv(f"zero_convs.{i}.0", width, width, 1)
    middle = arch.channels * arch.ch_mult[-1]
    spec.conv("middle_block_out.0", middle, middle, 1)
    return spec


def write_controlnet(folder, arch: UNetArch, seed=CONTROLNET_SEED) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{CONTROLNET_NAME}.safetensors"
    save_safetensors(materialize(controlnet_spec(arch), seed, torch.float16), path)
    return path


def make_a1111(out_dir, seed=SEED, bpe_path=None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = write_checkpoint(A1111_SD15_WIDTHS, ckpt_dir, seed, torch.float16)
    (ckpt_dir / f"{A1111_CKPT_NAME}.yaml").write_text(model_yaml(A1111_SD15_WIDTHS))
    loras = write_loras(out_dir / "Lora", A1111_SD15_WIDTHS, seed)
    write_hf_clip_cache(out_dir / "hf_home", A1111_SD15_WIDTHS.clip, bpe_path)
    controlnet = write_controlnet(out_dir / "ControlNet", A1111_CONTROLNET)
    return {"checkpoint": ckpt, **{path.stem: path for path in loras}, "controlnet": controlnet}


def make_forge(out_dir) -> dict[str, Path]:
    return {"controlnet": write_controlnet(Path(out_dir) / "ControlNet", FORGE_SD15.unet)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--host", choices=("a1111", "forge"), required=True)
    parser.add_argument("--clip-bpe", help="a1111: path to bpe_simple_vocab_16e6.txt.gz (default: from open_clip)")
    args = parser.parse_args(argv)
    paths = make_forge(args.out_dir) if args.host == "forge" else make_a1111(args.out_dir, bpe_path=args.clip_bpe)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
