"""The guidance math of AutoLoRA (paper, Algorithm 2) and which passes a step needs.

    cfg(m, w)  = m(uncond) + w * (m(cond) - m(uncond))
    autolora   = cfg(base, w1) + gamma * (cfg(lora, w2) - cfg(base, w1))

Both combinations are affine with weights summing to one, so they hold for x0, eps, v or flow
predictions alike at a fixed x and sigma.
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from lib_autolora.core.params import ParamsMethods


class Affine(Protocol):
    """What the combinations need of a prediction: sums, differences and scaling by a number (a torch
    tensor, or a plain number)."""
    def __add__(self: _P, other: _P, /) -> _P: ...
    def __sub__(self: _P, other: _P, /) -> _P: ...
    def __rmul__(self: _P, other: float, /) -> _P: ...


_P = TypeVar("_P", bound=Affine)


class Passes(enum.Enum):
    """Which model evaluations one denoiser call needs."""
    LORA = "lora"   # plain LoRA generation guided with w2
    BASE = "base"   # the model without the prompt's networks, guided with w1
    BOTH = "both"   # AutoLoRA: both evaluations, blended with gamma


def cfg(uncond: _P, cond: _P, scale: float) -> _P:
    """Classifier-free guidance of one model's predictions."""
    return uncond + scale * (cond - uncond)


def autolora(base_guided: _P, lora_guided: _P, gamma: float) -> _P:
    """Blend the guided base and LoRA predictions. gamma 0 and 1 return an input unchanged,
    so those settings reproduce plain generations bit for bit."""
    if gamma == 1:
        return lora_guided
    if gamma == 0:
        return base_guided
    return base_guided + gamma * (lora_guided - base_guided)


def in_range(progress: float, start: float, end: float) -> bool:
    """Whether a denoiser call at `progress` (0 = first call, 1 = after the last) lies in [start, end)."""
    return start <= progress < end


def passes_for(params: ParamsMethods, progress: float) -> Passes:
    """The evaluations a denoiser call at `progress` of sampling needs under `params`."""
    if not in_range(progress, params.start, params.end) or params.gamma == 1:
        return Passes.LORA
    if params.gamma == 0:
        return Passes.BASE
    return Passes.BOTH
