"""The guidance math of AutoLoRA (paper, Algorithm 2) and which passes a step needs.

    cfg(m, w)  = m(uncond) + w * (m(cond) - m(uncond))
    autolora   = cfg(base, w1) + gamma * (cfg(lora, w2) - cfg(base, w1))

Both combinations are affine with weights summing to one, so they hold for x0, eps, v or flow
predictions alike at a fixed x and sigma.
"""
import enum


class Passes(enum.Enum):
    """Which model evaluations one denoiser call needs."""
    LORA = "lora"   # plain LoRA generation guided with w2
    BASE = "base"   # the model without the prompt's networks, guided with w1
    BOTH = "both"   # AutoLoRA: both evaluations, blended with gamma


def cfg(uncond, cond, scale):
    """Classifier-free guidance of one model's predictions."""
    return uncond + scale * (cond - uncond)


def autolora(base_guided, lora_guided, gamma):
    """Blend the guided base and LoRA predictions. gamma 0 and 1 return an input unchanged,
    so those settings reproduce plain generations bit for bit."""
    if gamma == 1:
        return lora_guided
    if gamma == 0:
        return base_guided
    return base_guided + gamma * (lora_guided - base_guided)


def in_range(progress, start, end):
    """Whether a denoiser call at `progress` (0 = first call, 1 = after the last) lies in [start, end)."""
    return start <= progress < end


def passes_for(params, progress):
    """The evaluations a denoiser call at `progress` of sampling needs under `params`."""
    if not in_range(progress, params.start, params.end) or params.gamma == 1:
        return Passes.LORA
    if params.gamma == 0:
        return Passes.BASE
    return Passes.BOTH
