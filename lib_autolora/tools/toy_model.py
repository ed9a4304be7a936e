"""The demo's toy: a conditional diffusion model of 2-D points (four classes of shapes, EDM
preconditioning), a LoRA of rank-`r` adapters on its linear layers that can be switched off, and
EDM's training loss."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------------------- data

CLASS_NAMES = ("ring", "grid", "cross", "square")
NO_LABEL = len(CLASS_NAMES)  # the unconditional "prompt"
RING = 0
CENTERS = np.array([(-1.5, 1.5), (1.5, 1.5), (-1.5, -1.5), (1.5, -1.5)])
RADIUS, LORA_RADIUS = 0.8, 1.2   # the base's ring and the LoRA's look
HALF = 0.7                       # half size of the grid, the cross and the square
NOISE = 0.03                     # thickness of every shape


def ring(radius: float, angle: np.ndarray) -> np.ndarray:
    return CENTERS[RING] + radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def shape_points(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n noiseless points of class `label`, relative to its center."""
    h = HALF
    if label == RING:
        return ring(RADIUS, rng.uniform(0, 2 * math.pi, n)) - CENTERS[RING]
    if label == 1:
        grid = np.array([(x, y) for x in (-h, 0, h) for y in (-h, 0, h)])
        return grid[rng.integers(0, 9, n)]
    if label == 2:
        segments = np.array([[(-h, -h), (h, h)], [(-h, h), (h, -h)]])
    else:
        corners = np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
        segments = np.stack([corners, np.roll(corners, -1, axis=0)], axis=1)
    which, t = rng.integers(0, len(segments), n), rng.uniform(0, 1, (n, 1))
    return segments[which, 0] + t * (segments[which, 1] - segments[which, 0])


def make_dataset(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(CLASS_NAMES), n)
    points = np.zeros((n, 2))
    for label in range(len(CLASS_NAMES)):
        mask = labels == label
        points[mask] = CENTERS[label] + shape_points(label, int(mask.sum()), rng)
    return points + NOISE * rng.standard_normal((n, 2)), labels


def lora_examples(n: int, rng: np.random.Generator) -> np.ndarray:
    """The LoRA's few training points: the ring prompt drawn with radius LORA_RADIUS."""
    return ring(LORA_RADIUS, rng.uniform(0, 2 * math.pi, n)) + NOISE * rng.standard_normal((n, 2))


# --------------------------------------------------------------------------------------- model

class LoraLinear(nn.Module):
    """A frozen linear layer plus a low-rank update times `weight` (0: switched off)."""

    def __init__(self, linear: nn.Linear, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.linear, self.weight = linear, 0.0
        down = torch.randn(rank, linear.in_features, generator=generator) / math.sqrt(linear.in_features)
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(linear.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if self.weight:
            out = out + self.weight * (x @ self.down.T @ self.up.T)
        return out


class Denoiser(nn.Module):
    """D(x, sigma, label) -> estimate of the clean point, with EDM preconditioning."""
    freqs: torch.Tensor  # the buffer registered in __init__

    def __init__(self, hidden: int, sigma_data: float) -> None:
        super().__init__()
        self.sigma_data = sigma_data
        self.embed = nn.Embedding(len(CLASS_NAMES) + 1, 32)
        self.net = nn.Sequential(nn.Linear(2 + 16 + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.register_buffer("freqs", torch.exp2(torch.arange(8, dtype=torch.float32)) / 4)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x: (N, 2), sigma: (N, 1), label: (N,)."""
        total = (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_skip, c_out, c_in = self.sigma_data ** 2 / total ** 2, sigma * self.sigma_data / total, 1 / total
        angle = sigma.log() * self.freqs
        features = torch.cat([c_in * x, angle.sin(), angle.cos(), self.embed(label)], dim=1)
        return c_skip * x + c_out * self.net(features)

    def add_lora(self, rank: int, generator: torch.Generator) -> list[nn.Parameter]:
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                self.net[i] = LoraLinear(layer, rank, generator)
        return [p for layer in self.lora_layers() for p in (layer.down, layer.up)]

    def lora_layers(self) -> list[LoraLinear]:
        return [m for m in self.net if isinstance(m, LoraLinear)]

    @contextlib.contextmanager
    def lora(self, weight: float) -> Iterator[None]:
        """Run the block with the LoRA at `weight` (0: the base model, the LoRA switched off)."""
        layers = self.lora_layers()
        saved = [layer.weight for layer in layers]
        for layer in layers:
            layer.weight = weight
        try:
            yield
        finally:
            for layer, old in zip(layers, saved):
                layer.weight = old


def train(model: Denoiser, params: Iterable[nn.Parameter], points: torch.Tensor, labels: torch.Tensor, steps: int,
          batch: int, lr: float, generator: torch.Generator) -> None:
    """EDM's loss: log sigma ~ N(-1.2, 1.2^2), weight (sigma^2 + sd^2) / (sigma sd)^2; labels dropped 10%."""
    optimizer = torch.optim.Adam(params, lr=lr)
    sd = model.sigma_data
    for step in range(steps):
        for group in optimizer.param_groups:  # cosine decay: a stable end point
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(0, len(points), (batch,), generator=generator)
        x0, label = points[index], labels[index].clone()
        label[torch.rand(batch, generator=generator) < 0.1] = NO_LABEL
        sigma = (torch.randn(batch, 1, generator=generator) * 1.2 - 1.2).exp()
        noisy = x0 + sigma * torch.randn(batch, 2, generator=generator)
        loss = ((sigma ** 2 + sd ** 2) / (sigma * sd) ** 2 * (model(noisy, sigma, label) - x0) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
