#!/usr/bin/env python3
"""Make small, deterministic fixtures for testing sd-webui-autolora in a real
WebUI on a CPU: AUTOMATIC1111 (v1.10.x) or Stable Diffusion WebUI Forge.

    python tests/make_fixtures.py OUT_DIR [--host a1111] [--hf-home DIR] [--clip-bpe FILE]
    python tests/make_fixtures.py OUT_DIR --host forge

--host a1111 (the default) writes into OUT_DIR (nothing here is meant to be committed):

  Stable-diffusion/autolora-tiny-sd1.safetensors   SD1-architecture checkpoint, random weights
  Stable-diffusion/autolora-tiny-sd1.yaml          its model config (A1111 reads NAME.yaml
                                                   beside NAME.safetensors)
  Lora/autolora_test_lora.safetensors       kohya LoRA: UNet attn/ff/conv + text encoder
  Lora/autolora_test_loha.safetensors       kohya/LyCORIS LoHa on UNet layers
  Lora/autolora_test_unet_only.safetensors  kohya LoRA on UNet layers only
  hf_home/hub/models--openai--clip-vit-large-patch14/...
      the files A1111's FrozenCLIPEmbedder asks the Hugging Face cache for: a tiny
      CLIP text config plus the real CLIP BPE tokenizer (start A1111 with HF_HOME
      pointing at OUT_DIR/hf_home and HF_HUB_OFFLINE=1).

Point A1111 at it with --ckpt-dir OUT_DIR/Stable-diffusion --lora-dir OUT_DIR/Lora
(the checkpoint has its own folder because A1111 lists every .safetensors below
--ckpt-dir, LoRAs included, as a checkpoint).

The topology is SD1's (channel_mult [1,2,4,4], 2 res blocks, attention at ds 1/2/4,
12 CLIP layers) but very narrow, so kohya key names map exactly as for a real SD1
model while a sampling step takes ~0.1 s on a CPU.

--host forge writes Stable-diffusion/autolora-sd15-forge.safetensors and the same
three Lora/ files (same names and kinds, shaped for this checkpoint); start Forge with
the same --ckpt-dir / --lora-dir. Forge ignores yaml files and guesses the model
from the state dict: SD1.5 needs model_channels 320 and context_dim 768, takes the
levels, res blocks and transformer depth from the keys, and builds the text encoder
(CLIP-L, 12 layers x 768) and the VAE from its bundled SD1.5 configs, so those two
are full size. Only the UNet shrinks: one level (channel_mult [1]), one res block,
attention there and in the middle block. About 232M parameters (UNet 26M, VAE 84M,
CLIP 123M), stored as float16: 465 MB; a 64x64, 8-step image takes ~1 s on 2 CPUs.
Forge brings its own tokenizer, so no hf_home is written.

Only torch and numpy are used (the files are in the safetensors format, written
here directly); the A1111 tokenizer vocabulary is built from the
`bpe_simple_vocab_16e6.txt.gz` file that the open-clip-torch package bundles.
Output is byte-identical from run to run (the LoRA files differ in the last bits
between NumPy 1.x and 2.x, whose float promotion rules differ).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SEED = 1234
CKPT_NAME = "autolora-tiny-sd1"
LORA_FILES = ("autolora_test_lora", "autolora_test_loha", "autolora_test_unet_only")

# Tiny SD1 topology. Widths shrink; structure (and so layer names) stays SD1's.
UNET_CH = 32                   # model_channels (SD1: 320); GroupNorm(32) needs a multiple of 32
CONTEXT_DIM = 64               # CLIP hidden size = UNet cross-attention context (SD1: 768)
CH_MULT = (1, 2, 4, 4)
NUM_RES_BLOCKS = 2
ATTENTION_RES = (4, 2, 1)      # downsample factors that get a SpatialTransformer
NUM_HEADS = 8
VAE_CH = 32
VAE_MULT = (1, 2, 2, 2)        # 4 levels: the 8x latent downscale A1111 assumes
VAE_RES_BLOCKS = 1
Z_CH = 4
CLIP_LAYERS = 12
CLIP_HEADS = 4
CLIP_VOCAB = 49408
CLIP_MAX_POS = 77



@dataclass(frozen=True)
class Arch:
    """What fixes an SD1-family checkpoint's parameter names and shapes."""
    unet_ch: int                  # model_channels
    context_dim: int              # CLIP hidden size = UNet cross-attention context
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attention_res: tuple[int, ...]  # downsample factors that get a SpatialTransformer
    vae_ch: int
    vae_mult: tuple[int, ...]
    vae_res_blocks: int
    clip_layers: int
    z_ch: int = Z_CH
    clip_vocab: int = CLIP_VOCAB
    clip_max_pos: int = CLIP_MAX_POS

    def has_attention(self, level):
        return 2 ** level in self.attention_res


# A1111 builds the model from the yaml written beside the checkpoint, so any widths work.
TINY_SD1 = Arch(UNET_CH, CONTEXT_DIM, CH_MULT, NUM_RES_BLOCKS, ATTENTION_RES,
                VAE_CH, VAE_MULT, VAE_RES_BLOCKS, CLIP_LAYERS)
# Forge guesses the model from the state dict: SD1.5 needs model_channels 320 and
# context_dim 768, takes levels / res blocks / transformer depth from the keys, and
# builds CLIP-L and the VAE from its bundled SD1.5 configs, so those are full size.
FORGE_SD15 = Arch(unet_ch=320, context_dim=768, ch_mult=(1,), num_res_blocks=1, attention_res=(1,),
                  vae_ch=128, vae_mult=(1, 2, 4, 4), vae_res_blocks=2, clip_layers=12)
FORGE_CKPT_NAME = "autolora-sd15-forge"

CLIP_REPO_DIR = "models--openai--clip-vit-large-patch14"
# Any fixed 40-hex "commit" works for an offline cache snapshot.
CLIP_SNAPSHOT = hashlib.sha1(b"autolora-tiny-clip").hexdigest()


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata=None):
    """Write a .safetensors file. safetensors' own save_file keeps the metadata
    in a Rust HashMap whose order changes per run; writing the (simple) format
    here with a fixed key order keeps the fixtures byte-identical."""
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}
    header = {"__metadata__": dict(sorted((metadata or {}).items()))} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)          # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for data in blobs:
            f.write(data)


# ---------------------------------------------------------------------------
# Checkpoint: a table of parameter name -> (shape, how to initialise)
# ---------------------------------------------------------------------------

class ParamSpec:
    """Ordered parameter table; insertion order fixes the random stream."""

    def __init__(self):
        self.entries: dict[str, tuple[tuple[int, ...], str]] = {}

    def add(self, name, shape, init):
        self.entries[name] = (tuple(shape), init)

    def linear(self, name, n_out, n_in, bias=True, init="w"):
        self.add(f"{name}.weight", (n_out, n_in), init)
        if bias:
            self.add(f"{name}.bias", (n_out,), "bias")

    def conv(self, name, n_out, n_in, k, init="w"):
        self.add(f"{name}.weight", (n_out, n_in, k, k), init)
        self.add(f"{name}.bias", (n_out,), "bias")

    def norm(self, name, c, bias_init="zeros"):
        # GroupNorm and LayerNorm share the weight/bias layout.
        self.add(f"{name}.weight", (c,), "ones")
        self.add(f"{name}.bias", (c,), bias_init)


def _std(shape, init):
    """Standard deviation for each init kind."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return {
        "w": 1.0 / np.sqrt(fan_in),
        # ldm zero-initialises residual output layers (out_layers.3, proj_out, ...);
        # with zeros the random UNet ignores its blocks, so use small non-zero values.
        "resid": 0.3 / np.sqrt(fan_in),
        "sharp": 3.0 / np.sqrt(fan_in),
        "bias": 0.02,
        "embed": 1.0,
        "final_ln_bias": 0.1,   # around +0.5, see materialize()
        # Decoder output: keep pixels mostly inside [-1, 1] (no black/white clipping).
        "image": 0.4 / np.sqrt(fan_in),
    }[init]


def materialize(spec: ParamSpec, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Draw the values (in float32, whatever `dtype` they are stored as)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, init) in spec.entries.items():
        if init == "ones":
            arr = np.ones(shape, np.float32)
        elif init == "zeros":
            arr = np.zeros(shape, np.float32)
        else:
            arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(_std(shape, init))
            if init == "final_ln_bias":
                # Real CLIP's final LayerNorm has a non-zero bias. With a zero bias the
                # prompt embedding has mean ~0 and A1111's emphasis rescale (divide by
                # the mean) turns the conditioning into NaN.
                arr += np.float32(0.5)
        out[name] = torch.from_numpy(arr).to(dtype)
    return out


def _unet_resblock(s, p, c_in, c_out, temb):
    s.norm(f"{p}.in_layers.0", c_in)
    s.conv(f"{p}.in_layers.2", c_out, c_in, 3)
    s.linear(f"{p}.emb_layers.1", c_out, temb)
    s.norm(f"{p}.out_layers.0", c_out)
    s.conv(f"{p}.out_layers.3", c_out, c_out, 3, init="resid")
    if c_in != c_out:
        s.conv(f"{p}.skip_connection", c_out, c_in, 1)


def _unet_transformer(s, p, c, context_dim):
    # SD1 SpatialTransformer: 1x1-conv proj_in/proj_out, one BasicTransformerBlock.
    s.norm(f"{p}.norm", c)
    s.conv(f"{p}.proj_in", c, c, 1)
    b = f"{p}.transformer_blocks.0"
    for attn, ctx in (("attn1", c), ("attn2", context_dim)):
        s.linear(f"{b}.{attn}.to_q", c, c, bias=False)
        # Cross-attention keys get a larger scale: sharper attention over the 77
        # prompt tokens, so that changing one word changes the image.
        s.linear(f"{b}.{attn}.to_k", c, ctx, bias=False, init="w" if attn == "attn1" else "sharp")
        s.linear(f"{b}.{attn}.to_v", c, ctx, bias=False)
        s.linear(f"{b}.{attn}.to_out.0", c, c, init="resid" if attn == "attn1" else "w")
    s.linear(f"{b}.ff.net.0.proj", c * 8, c)          # GEGLU: 2 x (4 * c)
    s.linear(f"{b}.ff.net.2", c, c * 4, init="resid")
    for i in (1, 2, 3):
        s.norm(f"{b}.norm{i}", c)
    s.conv(f"{p}.proj_out", c, c, 1, init="resid")


def unet_spec(s, arch=TINY_SD1, p="model.diffusion_model"):
    """ldm UNetModel (use_spatial_transformer, legacy=False) parameter names."""
    base, ctx = arch.unet_ch, arch.context_dim
    temb = base * 4
    s.linear(f"{p}.time_embed.0", temb, base)
    s.linear(f"{p}.time_embed.2", temb, temb)
    s.conv(f"{p}.input_blocks.0.0", base, 4, 3)
    ch, idx, skips = base, 1, [base]
    for level, mult in enumerate(arch.ch_mult):
        for _ in range(arch.num_res_blocks):
            _unet_resblock(s, f"{p}.input_blocks.{idx}.0", ch, base * mult, temb)
            ch = base * mult
            if arch.has_attention(level):
                _unet_transformer(s, f"{p}.input_blocks.{idx}.1", ch, ctx)
            skips.append(ch)
            idx += 1
        if level != len(arch.ch_mult) - 1:
            s.conv(f"{p}.input_blocks.{idx}.0.op", ch, ch, 3)   # Downsample
            skips.append(ch)
            idx += 1
    _unet_resblock(s, f"{p}.middle_block.0", ch, ch, temb)
    _unet_transformer(s, f"{p}.middle_block.1", ch, ctx)
    _unet_resblock(s, f"{p}.middle_block.2", ch, ch, temb)
    idx = 0
    for level, mult in reversed(list(enumerate(arch.ch_mult))):
        for r in range(arch.num_res_blocks + 1):
            _unet_resblock(s, f"{p}.output_blocks.{idx}.0", ch + skips.pop(), base * mult, temb)
            ch, sub = base * mult, 1
            if arch.has_attention(level):
                _unet_transformer(s, f"{p}.output_blocks.{idx}.1", ch, ctx)
                sub = 2
            if level and r == arch.num_res_blocks:
                s.conv(f"{p}.output_blocks.{idx}.{sub}.conv", ch, ch, 3)   # Upsample
            idx += 1
    s.norm(f"{p}.out.0", ch)
    # ldm zero-inits this too; a full-size init gives eps ~ unit scale.
    s.conv(f"{p}.out.2", 4, ch, 3)


def _vae_resblock(s, p, c_in, c_out):
    s.norm(f"{p}.norm1", c_in)
    s.conv(f"{p}.conv1", c_out, c_in, 3)
    s.norm(f"{p}.norm2", c_out)
    s.conv(f"{p}.conv2", c_out, c_out, 3, init="resid")
    if c_in != c_out:
        s.conv(f"{p}.nin_shortcut", c_out, c_in, 1)


def _vae_mid(s, p, c):
    _vae_resblock(s, f"{p}.block_1", c, c)
    s.norm(f"{p}.attn_1.norm", c)
    for n in ("q", "k", "v"):
        s.conv(f"{p}.attn_1.{n}", c, c, 1)
    s.conv(f"{p}.attn_1.proj_out", c, c, 1, init="resid")
    _vae_resblock(s, f"{p}.block_2", c, c)


def vae_spec(s, arch=TINY_SD1, p="first_stage_model"):
    """ldm AutoencoderKL (no attention in the down/up levels) parameter names."""
    chs = [arch.vae_ch * m for m in arch.vae_mult]
    z = arch.z_ch
    e, ch = f"{p}.encoder", chs[0]
    s.conv(f"{e}.conv_in", ch, 3, 3)
    for i, c_out in enumerate(chs):
        for j in range(arch.vae_res_blocks):
            _vae_resblock(s, f"{e}.down.{i}.block.{j}", ch, c_out)
            ch = c_out
        if i != len(chs) - 1:
            s.conv(f"{e}.down.{i}.downsample.conv", ch, ch, 3)
    _vae_mid(s, f"{e}.mid", ch)
    s.norm(f"{e}.norm_out", ch)
    s.conv(f"{e}.conv_out", 2 * z, ch, 3)
    s.conv(f"{p}.quant_conv", 2 * z, 2 * z, 1)
    s.conv(f"{p}.post_quant_conv", z, z, 1)
    d, ch = f"{p}.decoder", chs[-1]
    s.conv(f"{d}.conv_in", ch, z, 3)
    _vae_mid(s, f"{d}.mid", ch)
    for i in reversed(range(len(chs))):
        for j in range(arch.vae_res_blocks + 1):
            _vae_resblock(s, f"{d}.up.{i}.block.{j}", ch, chs[i])
            ch = chs[i]
        if i != 0:
            s.conv(f"{d}.up.{i}.upsample.conv", ch, ch, 3)
    s.norm(f"{d}.norm_out", ch)
    s.conv(f"{d}.conv_out", 3, ch, 3, init="image")


def clip_spec(s, arch=TINY_SD1, p="cond_stage_model.transformer.text_model"):
    """Hugging Face CLIPTextModel parameter names (as in SD1 checkpoints)."""
    h = arch.context_dim
    s.add(f"{p}.embeddings.token_embedding.weight", (arch.clip_vocab, h), "embed")
    s.add(f"{p}.embeddings.position_embedding.weight", (arch.clip_max_pos, h), "embed")
    for i in range(arch.clip_layers):
        l = f"{p}.encoder.layers.{i}"
        for n in ("q", "k", "v"):
            s.linear(f"{l}.self_attn.{n}_proj", h, h)
        s.linear(f"{l}.self_attn.out_proj", h, h, init="resid")
        s.norm(f"{l}.layer_norm1", h)
        s.linear(f"{l}.mlp.fc1", 4 * h, h)
        s.linear(f"{l}.mlp.fc2", h, 4 * h, init="resid")
        s.norm(f"{l}.layer_norm2", h)
    s.norm(f"{p}.final_layer_norm", h, bias_init="final_ln_bias")


POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def checkpoint_spec(arch=TINY_SD1) -> ParamSpec:
    s = ParamSpec()
    unet_spec(s, arch)
    vae_spec(s, arch)
    clip_spec(s, arch)
    return s


def checkpoint_shapes(arch=TINY_SD1) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every checkpoint tensor, without making the tensors."""
    shapes = {name: shape for name, (shape, _) in checkpoint_spec(arch).entries.items()}
    shapes[POSITION_IDS] = (1, arch.clip_max_pos)
    return shapes


def checkpoint_state_dict(seed=SEED, arch=TINY_SD1, dtype=torch.float32) -> dict[str, torch.Tensor]:
    sd = materialize(checkpoint_spec(arch), seed, dtype)
    # Present in SD1 checkpoints (a persistent buffer in transformers 4.30).
    sd[POSITION_IDS] = torch.arange(arch.clip_max_pos, dtype=torch.int64)[None]
    return sd


def model_yaml() -> str:
    """configs/v1-inference.yaml with the tiny widths."""
    attn = ", ".join(map(str, ATTENTION_RES))
    mult = ", ".join(map(str, CH_MULT))
    vae_mult = ", ".join(map(str, VAE_MULT))
    return f"""\
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 64
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32
        in_channels: 4
        out_channels: 4
        model_channels: {UNET_CH}
        attention_resolutions: [ {attn} ]
        num_res_blocks: {NUM_RES_BLOCKS}
        channel_mult: [ {mult} ]
        num_heads: {NUM_HEADS}
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: {CONTEXT_DIM}
        use_checkpoint: False
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {Z_CH}
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: {Z_CH}
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: {VAE_CH}
          ch_mult: [ {vae_mult} ]
          num_res_blocks: {VAE_RES_BLOCKS}
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
"""


# ---------------------------------------------------------------------------
# Hugging Face cache for openai/clip-vit-large-patch14 (config + tokenizer)
# ---------------------------------------------------------------------------

def find_clip_bpe() -> Path:
    """The CLIP BPE merges list that open-clip-torch ships inside its package."""
    env = os.environ.get("AUTOLORA_CLIP_BPE")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.origin:
        path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
        if path.exists():
            return path
    raise FileNotFoundError("bpe_simple_vocab_16e6.txt.gz not found: install open-clip-torch, "
                            "or pass --clip-bpe / set AUTOLORA_CLIP_BPE")


def byte_symbols() -> list[str]:
    """CLIP's byte-level alphabet (as in GPT-2), in vocabulary order: bytes that
    are printable Latin-1 stand for themselves and come first; the other 68
    bytes follow, shown as the characters 256, 257, ... in byte order."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_tokenizer_files(bpe_path: Path) -> tuple[dict, str]:
    """vocab.json content and merges.txt text, laid out as CLIPTokenizer expects:
    256 byte symbols, the same with an end-of-word mark, one token per merge,
    then the two special tokens (49408 in all)."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:1 + CLIP_VOCAB - 2 * 256 - 2]      # line 0 is a version header
    tokens = byte_symbols() + [t + "</w>" for t in byte_symbols()]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, "#version: 0.2\n" + "\n".join(merges) + "\n"


def write_hf_clip_cache(hf_home, bpe_path=None) -> Path:
    """Write config + tokenizer for openai/clip-vit-large-patch14 into an offline
    HF cache (HF_HOME/hub/...). The weights come from the checkpoint instead."""
    hf_home = Path(hf_home)
    repo = hf_home / "hub" / CLIP_REPO_DIR
    snap = repo / "snapshots" / CLIP_SNAPSHOT
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(CLIP_SNAPSHOT)
    config = {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "vocab_size": CLIP_VOCAB, "hidden_size": CONTEXT_DIM,
        "intermediate_size": 4 * CONTEXT_DIM, "projection_dim": CONTEXT_DIM,
        "num_hidden_layers": CLIP_LAYERS, "num_attention_heads": CLIP_HEADS,
        "max_position_embeddings": CLIP_MAX_POS, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "dropout": 0.0,
        "initializer_range": 0.02, "initializer_factor": 1.0,
        "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
        "torch_dtype": "float32",
    }
    eot = "<|endoftext|>"
    tok_config = {
        "unk_token": eot, "bos_token": "<|startoftext|>", "eos_token": eot, "pad_token": eot,
        "add_prefix_space": False, "errors": "replace", "do_lower_case": True,
        "model_max_length": CLIP_MAX_POS, "tokenizer_class": "CLIPTokenizer",
    }
    special = {k: tok_config[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")}
    vocab, merges = clip_tokenizer_files(Path(bpe_path) if bpe_path else find_clip_bpe())
    files = {
        "config.json": json.dumps(config, indent=2),
        "tokenizer_config.json": json.dumps(tok_config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": merges,
    }
    for name, text in files.items():
        (snap / name).write_text(text, encoding="utf-8")
    return snap


# ---------------------------------------------------------------------------
# LoRA / LoHa files (kohya key layout)
# ---------------------------------------------------------------------------

ATTN_SUFFIXES = {   # kohya suffix -> ldm sub-module inside a SpatialTransformer
    **{f"transformer_blocks_0_{a}_to_{n}": f"transformer_blocks.0.{a}.to_{n}"
       for a in ("attn1", "attn2") for n in ("q", "k", "v")},
    "transformer_blocks_0_attn1_to_out_0": "transformer_blocks.0.attn1.to_out.0",
    "transformer_blocks_0_attn2_to_out_0": "transformer_blocks.0.attn2.to_out.0",
    "transformer_blocks_0_ff_net_0_proj": "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks_0_ff_net_2": "transformer_blocks.0.ff.net.2",
    "proj_in": "proj_in",
    "proj_out": "proj_out",
}
RESNET_SUFFIXES = {"conv1": "in_layers.2", "conv2": "out_layers.3"}


def unet_blocks(arch=TINY_SD1):
    """(kohya block prefix, ldm module prefix, kind) for an SD1-family UNet.
    diffusers numbers blocks per level; ldm numbers them in one flat list
    (each down level adds a downsampler, each up level an extra res block)."""
    out, levels, per_level = [], len(arch.ch_mult), arch.num_res_blocks + 1
    for lvl in range(levels):
        for j in range(arch.num_res_blocks):
            ldm = f"diffusion_model.input_blocks.{1 + per_level * lvl + j}"
            out.append((f"down_blocks_{lvl}_resnets_{j}", f"{ldm}.0", "resnet"))
            if arch.has_attention(lvl):
                out.append((f"down_blocks_{lvl}_attentions_{j}", f"{ldm}.1", "attn"))
    out.append(("mid_block_resnets_0", "diffusion_model.middle_block.0", "resnet"))
    out.append(("mid_block_attentions_0", "diffusion_model.middle_block.1", "attn"))
    out.append(("mid_block_resnets_1", "diffusion_model.middle_block.2", "resnet"))
    for up in range(levels):   # diffusers up_blocks_0 is the deepest level
        for j in range(per_level):
            ldm = f"diffusion_model.output_blocks.{per_level * up + j}"
            out.append((f"up_blocks_{up}_resnets_{j}", f"{ldm}.0", "resnet"))
            if arch.has_attention(levels - 1 - up):
                out.append((f"up_blocks_{up}_attentions_{j}", f"{ldm}.1", "attn"))
    return out


def lora_targets(shapes, attn=True, conv_blocks=(), text_encoder=False, attn_filter=None, arch=TINY_SD1):
    """[(kohya module name, weight shape)]; shapes maps checkpoint names to shapes."""
    targets = []
    for kohya, ldm, kind in unet_blocks(arch):
        if kind == "attn" and attn and (attn_filter is None or attn_filter(kohya)):
            for ks, ls in ATTN_SUFFIXES.items():
                targets.append((f"lora_unet_{kohya}_{ks}", shapes[f"model.{ldm}.{ls}.weight"]))
        if kind == "resnet" and kohya.startswith(tuple(conv_blocks)):
            for ks, ls in RESNET_SUFFIXES.items():
                targets.append((f"lora_unet_{kohya}_{ks}", shapes[f"model.{ldm}.{ls}.weight"]))
    if text_encoder:
        te = "cond_stage_model.transformer.text_model.encoder.layers"
        for i in range(arch.clip_layers):
            for ks, ls in (("self_attn_q_proj", "self_attn.q_proj"), ("self_attn_k_proj", "self_attn.k_proj"),
                           ("self_attn_v_proj", "self_attn.v_proj"), ("self_attn_out_proj", "self_attn.out_proj"),
                           ("mlp_fc1", "mlp.fc1"), ("mlp_fc2", "mlp.fc2")):
                targets.append((f"lora_te_text_model_encoder_layers_{i}_{ks}", shapes[f"{te}.{i}.{ls}.weight"]))
    return targets


def lora_tensors(targets, rng, rank=4, alpha=2.0, strength=1.0):
    """Plain LoRA: W' = W + up @ down * alpha / rank. Values are scaled so the
    update is about `strength` times the size of W (W ~ 1/sqrt(fan_in))."""
    sd = {}
    for name, shape in targets:
        n_out, fan_in = shape[0], int(np.prod(shape[1:]))
        down = rng.standard_normal((rank, *shape[1:]), dtype=np.float32) / np.sqrt(fan_in)
        up_shape = (n_out, rank) + (1, 1) * (len(shape) == 4)  # conv: 1x1 up after kxk down
        up = rng.standard_normal(up_shape, dtype=np.float32) * (strength * rank / alpha / np.sqrt(rank))
        sd[f"{name}.lora_down.weight"] = torch.from_numpy(down.astype(np.float32))
        sd[f"{name}.lora_up.weight"] = torch.from_numpy(up.astype(np.float32))
        sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return sd


def loha_tensors(targets, rng, rank=4, alpha=4.0, strength=1.0):
    """LoHa: W' = W + (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank (linear layers)."""
    sd = {}
    for name, (n_out, n_in) in targets:
        # each factor product ~ f per element, so the update is ~ f^2 * alpha / rank
        f = np.sqrt(strength / np.sqrt(n_in) * rank / alpha)
        for w in ("w1", "w2"):
            a = rng.standard_normal((n_out, rank), dtype=np.float32)
            b = rng.standard_normal((rank, n_in), dtype=np.float32) * (f / np.sqrt(rank))
            sd[f"{name}.hada_{w}_a"] = torch.from_numpy(a)
            sd[f"{name}.hada_{w}_b"] = torch.from_numpy(b.astype(np.float32))
        sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return sd


def _kohya_metadata(name, module, dim, alpha, extra=None, ckpt_name=CKPT_NAME):
    meta = {
        "ss_output_name": name, "ss_network_module": module,
        "ss_network_dim": str(dim), "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1", "ss_sd_model_name": f"{ckpt_name}.safetensors",
    }
    meta.update(extra or {})
    return meta


def write_loras(lora_dir, shapes, seed=SEED, arch=TINY_SD1, ckpt_name=CKPT_NAME) -> list[Path]:
    """The three LoRA fixtures for the checkpoint with these shapes (from `arch`)."""
    lora_dir = Path(lora_dir)
    lora_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    # 1. LoRA on UNet attention/ff/proj, the resnet convs of the outermost levels and the
    #    middle, and the text encoder.
    outer = ("down_blocks_0", "mid_block", f"up_blocks_{len(arch.ch_mult) - 1}")
    lora = lora_tensors(lora_targets(shapes, conv_blocks=outer, text_encoder=True, arch=arch), rng)
    tags = json.dumps({"10_autolora": {"autolora_trigger": 10, "cat": 4}})
    meta = [_kohya_metadata("autolora_test_lora", "networks.lora", 4, 2.0, {"ss_tag_frequency": tags},
                            ckpt_name)]
    # 2. LoHa on the linear layers of the UNet transformers.
    loha_targets = [(n, s) for n, s in lora_targets(shapes, arch=arch) if len(s) == 2]
    loha = loha_tensors(loha_targets, rng)
    meta.append(_kohya_metadata("autolora_test_loha", "lycoris.kohya", 4, 4.0,
                                {"ss_network_args": json.dumps({"algo": "loha"})}, ckpt_name))
    # 3. UNet-only LoRA (attention blocks of the down and mid levels).
    unet = lora_tensors(lora_targets(shapes, attn_filter=lambda k: not k.startswith("up_"), arch=arch), rng)
    meta.append(_kohya_metadata("autolora_test_unet_only", "networks.lora", 4, 2.0,
                                {"ss_network_train_unet_only": "True"}, ckpt_name))
    paths = []
    for name, sd, md in zip(LORA_FILES, (lora, loha, unet), meta):
        path = lora_dir / f"{name}.safetensors"
        save_safetensors(sd, path, md)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------

def make_a1111_fixtures(out_dir, hf_home=None, bpe_path=None, seed=SEED) -> dict[str, Path]:
    """Write every fixture; return their paths by role. hf_home defaults to
    OUT_DIR/hf_home (start A1111 with HF_HOME set to it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_home = Path(hf_home) if hf_home else out_dir / "hf_home"
    sd = checkpoint_state_dict(seed)
    ckpt_dir = out_dir / "Stable-diffusion"
    ckpt_dir.mkdir(exist_ok=True)
    ckpt = ckpt_dir / f"{CKPT_NAME}.safetensors"
    save_safetensors(sd, ckpt, {"format": "pt"})
    yaml = ckpt_dir / f"{CKPT_NAME}.yaml"
    yaml.write_text(model_yaml())
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    loras = write_loras(out_dir / "Lora", shapes, seed)
    snap = write_hf_clip_cache(hf_home, bpe_path)
    paths = {"ckpt_dir": ckpt_dir, "checkpoint": ckpt, "config": yaml, "lora_dir": out_dir / "Lora",
             "hf_home": hf_home, "clip_snapshot": snap}
    paths.update({name: p for name, p in zip(LORA_FILES, loras)})
    return paths


def make_forge_fixtures(out_dir, seed=SEED) -> dict[str, Path]:
    """Write the Forge checkpoint (float16) and its LoRAs (float32, as the A1111
    ones); return their paths by role. Forge brings its own CLIP tokenizer."""
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / f"{FORGE_CKPT_NAME}.safetensors"
    save_safetensors(checkpoint_state_dict(seed, FORGE_SD15, torch.float16), ckpt, {"format": "pt"})
    loras = write_loras(out_dir / "Lora", checkpoint_shapes(FORGE_SD15), seed, FORGE_SD15, FORGE_CKPT_NAME)
    paths = {"ckpt_dir": ckpt_dir, "checkpoint": ckpt, "lora_dir": out_dir / "Lora"}
    paths.update({name: p for name, p in zip(LORA_FILES, loras)})
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--host", choices=("a1111", "forge"), default="a1111",
                    help="which WebUI the fixtures are for (default a1111)")
    ap.add_argument("--hf-home", help="a1111: HF cache root to write the CLIP files to (default OUT_DIR/hf_home)")
    ap.add_argument("--clip-bpe", help="a1111: path to bpe_simple_vocab_16e6.txt.gz (default: from open_clip)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    if args.host == "forge":
        if args.hf_home or args.clip_bpe:
            ap.error("--hf-home and --clip-bpe are for --host a1111 (Forge brings its own tokenizer)")
        paths = make_forge_fixtures(args.out_dir, args.seed)
    else:
        paths = make_a1111_fixtures(args.out_dir, args.hf_home, args.clip_bpe, args.seed)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
