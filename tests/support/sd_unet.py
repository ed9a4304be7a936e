"""A UNet with the layout, layer sizes and ldm module names of Stable Diffusion's (SD1 or SDXL), random
weights, for benchmarks: res blocks, cross-attention transformers with GEGLU feed-forward, down/up
sampling and skip connections. `UNET_CONFIGS` has the full-size layouts and smaller ones of the same
layer sizes (fewer blocks) that fit a CPU run; `lora_layers` names the layers a kohya LoRA, LoCon or
LoHa trains."""
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    channels: tuple        # model channels per level
    depths: tuple          # transformer blocks per level (0 = no attention there)
    res_blocks: int        # res blocks per level on the way down (one more on the way up)
    context_dim: int
    head_dim: int = None   # SDXL: 64; SD1: channels / 8 heads
    linear_proj: bool = False  # SDXL's proj_in/proj_out are Linear, SD1's 1x1 Conv2d
    adm_dim: int = 0       # SDXL's pooled-text and size vector
    middle_depth: int = 1


UNET_CONFIGS = {
    "sd1-full": UNetConfig((320, 640, 1280, 1280), (1, 1, 1, 0), 2, 768),
    "sdxl-full": UNetConfig((320, 640, 1280), (0, 2, 10), 2, 2048, 64, True, 2816, 10),
    # the same layer sizes with fewer blocks (a half of SD1's parameters, a sixth of SDXL's), for a CPU run
    "sd1": UNetConfig((320, 640, 1280), (1, 1, 1), 1, 768),
    "sdxl": UNetConfig((320, 640, 1280), (0, 1, 1), 1, 2048, 64, True, 2816, 1),
    # SDXL's layout at a small width, for a run in seconds (benchmarks/gpu_check.py --quick)
    "sd-tiny": UNetConfig((32, 64), (0, 1), 1, 64, 16, True, 32, 1),
}


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, c_out), nn.SiLU(), nn.Dropout(0),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip_connection = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, emb, context):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0))

    def forward(self, x, context):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class TransformerBlock(nn.Module):
    def __init__(self, dim, context_dim, heads):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0), nn.Linear(dim * 4, dim))
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x), self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff.net(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, c, depth, config):
        super().__init__()
        heads = c // config.head_dim if config.head_dim else 8
        self.linear = config.linear_proj
        self.norm = nn.GroupNorm(32, c)
        self.proj_in = nn.Linear(c, c) if self.linear else nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(c, config.context_dim, heads) for _ in range(depth)])
        self.proj_out = nn.Linear(c, c) if self.linear else nn.Conv2d(c, c, 1)

    def forward(self, x, emb, context):
        b, c, h, w = x.shape
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        y = y.flatten(2).transpose(1, 2)
        if self.linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(b, c, h, w)
        return x + (y if self.linear else self.proj_out(y))


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, emb, context):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, emb, context):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Block(nn.Sequential):
    def forward(self, x, emb, context):
        for layer in self:
            x = layer(x) if isinstance(layer, nn.Conv2d) else layer(x, emb, context)
        return x


class SDUNet(nn.Module):
    """eps-prediction UNet taking (x, sigma, context[, y])."""

    def __init__(self, config, in_channels=4):
        super().__init__()
        c0, emb = config.channels[0], config.channels[0] * 4
        self.config = config
        self.time_embed = nn.Sequential(nn.Linear(c0, emb), nn.SiLU(), nn.Linear(emb, emb))
        if config.adm_dim:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(config.adm_dim, emb), nn.SiLU(), nn.Linear(emb, emb)))
        self.input_blocks = nn.ModuleList([Block(nn.Conv2d(in_channels, c0, 3, padding=1))])
        skips, c = [c0], c0
        for level, (width, depth) in enumerate(zip(config.channels, config.depths)):
            for _ in range(config.res_blocks):
                layers = [ResBlock(c, width, emb)] + ([SpatialTransformer(width, depth, config)] if depth else [])
                self.input_blocks.append(Block(*layers))
                c = width
                skips.append(c)
            if level < len(config.channels) - 1:
                self.input_blocks.append(Block(Downsample(c)))
                skips.append(c)
        self.middle_block = Block(ResBlock(c, c, emb), SpatialTransformer(c, config.middle_depth, config),
                                  ResBlock(c, c, emb))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(config.channels))):
            width, depth = config.channels[level], config.depths[level]
            for i in range(config.res_blocks + 1):
                layers = [ResBlock(c + skips.pop(), width, emb)]
                c = width
                if depth:
                    layers.append(SpatialTransformer(c, depth, config))
                if level and i == config.res_blocks:
                    layers.append(Upsample(c))
                self.output_blocks.append(Block(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))

    def forward(self, x, sigma, context, y=None):
        half = self.config.channels[0] // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=x.device) / half)
        t = sigma.log()[:, None].float() * freqs[None] * 250
        emb = self.time_embed(torch.cat([t.cos(), t.sin()], dim=1).to(x.dtype))
        if self.config.adm_dim:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


def make_sd_unet(name, seed=0, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    return SDUNet(UNET_CONFIGS[name]).to(device=device, dtype=dtype).eval().requires_grad_(False)


def lora_layers(model, kind):
    """The layers a kohya file of `kind` trains: "lora" the transformers' attention, feed-forward and proj
    layers; "locon" those and the convolutions of the res blocks and samplers; "loha" the transformers'
    Linear layers."""
    names = []
    for name, module in model.named_modules():
        transformer = ".transformer_blocks." in name or name.endswith(("proj_in", "proj_out"))
        conv = isinstance(module, nn.Conv2d) and not name.startswith(("input_blocks.0.", "out."))
        if kind == "loha" and isinstance(module, nn.Linear) and ".transformer_blocks." in name:
            names.append(name)
        elif kind != "loha" and isinstance(module, (nn.Linear, nn.Conv2d)) \
                and (transformer or kind == "locon" and conv):
            names.append(name)
    return names
