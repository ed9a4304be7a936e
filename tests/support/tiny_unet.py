"""A small UNet-shaped network (conv in, resnet, cross-attention transformer, feed-forward,
down/up sampling, conv out) with ldm-style module names, for tier-2 tests."""
import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(4, channels), nn.SiLU(),
                                       nn.Conv2d(channels, channels, 3, padding=1))
        self.out_layers = nn.Sequential(nn.GroupNorm(4, channels), nn.SiLU(),
                                        nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.out_layers(self.in_layers(x))


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x, context):
        b, n, d = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim, context_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))
        self.mha = nn.MultiheadAttention(dim, 2, batch_first=True)  # the layer type OpenCLIP uses

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x), self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels, context_dim):
        super().__init__()
        self.norm = nn.GroupNorm(4, channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class TinyUNet(nn.Module):
    """eps-prediction UNet taking (x, sigma, context)."""

    def __init__(self, channels=16, context_dim=24, in_channels=4):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(1, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.input_blocks = nn.ModuleList([
            nn.Conv2d(in_channels, channels, 3, padding=1),
            ResBlock(channels),
            SpatialTransformer(channels, context_dim),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        ])
        self.middle_block = nn.ModuleList([ResBlock(channels), SpatialTransformer(channels, context_dim)])
        self.output_blocks = nn.ModuleList([
            nn.Upsample(scale_factor=2),
            nn.Conv2d(channels * 2, channels, 3, padding=1),
            SpatialTransformer(channels, context_dim),
        ])
        self.out = nn.Sequential(nn.GroupNorm(4, channels), nn.SiLU(), nn.Conv2d(channels, in_channels, 3, padding=1))

    def forward(self, x, sigma, context):
        t = self.time_embed(sigma.log().reshape(-1, 1))[:, :, None, None]
        h = self.input_blocks[0](x) + t
        h = self.input_blocks[1](h)
        skip = self.input_blocks[2](h, context)
        h = self.input_blocks[3](skip)
        h = self.middle_block[1](self.middle_block[0](h), context)
        h = self.output_blocks[1](torch.cat([self.output_blocks[0](h), skip], dim=1))
        h = self.output_blocks[2](h, context)
        return self.out(h)


def make_tiny_unet(seed=0):
    torch.manual_seed(seed)
    return TinyUNet().eval()


# Layers the tier-2 network files change, by kind of network
LORA_LAYERS = [
    "input_blocks.0", "input_blocks.1.in_layers.2", "input_blocks.2.proj_in",
    "input_blocks.2.transformer_blocks.0.attn1.to_q", "input_blocks.2.transformer_blocks.0.attn2.to_k",
    "input_blocks.2.transformer_blocks.0.attn2.to_v", "input_blocks.2.transformer_blocks.0.attn2.to_out.0",
    "input_blocks.2.transformer_blocks.0.ff.0", "input_blocks.2.transformer_blocks.0.ff.2",
    "middle_block.1.transformer_blocks.0.attn2.to_k", "output_blocks.1", "output_blocks.2.proj_out", "out.2",
]
LOHA_LAYERS = ["middle_block.1.transformer_blocks.0.ff.0", "output_blocks.2.transformer_blocks.0.attn2.to_q"]
NORM_LAYERS = ["middle_block.0.in_layers.0", "output_blocks.2.transformer_blocks.0.norm2",
               "input_blocks.2.transformer_blocks.0.attn1.to_q"]  # a Linear without bias gets one
