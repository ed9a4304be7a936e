"""A stand-in for what Mikubill's sd-webui-controlnet does to an A1111 generation (fake_a1111's), written
from its behaviour: `scripts.hook` with `mark_prompt_context` / `prompt_context_is_marked`; before
sampling it marks the conds the host hands over (a row of +MARK before each prompt's tokens, -MARK
before each negative prompt's), and its UNet hook strips that row and adds the control to the rows
marked as prompts only (its "ControlNet is more important" mode). Rows without a mark all count as
prompts, as there."""
import sys
import types

import torch

MARK = 1024.0
CONTROL = 0.25  # what the control adds to the UNet output of a prompt row


def prompt_context_is_marked(x):
    return bool(((x[..., 0, :].abs() - MARK).abs().mean() < 1e-3).item())


def mark_prompt_context(x, positive):
    """Marks in place where the conds are lists (as the real one does) and returns x."""
    if isinstance(x, list):
        x[:] = [mark_prompt_context(item, positive) for item in x]
        return x
    if hasattr(x, "batch"):  # MulticondLearnedConditioning
        mark_prompt_context(x.batch, positive)
        return x
    if hasattr(x, "schedules"):  # ComposableScheduledPromptConditioning
        mark_prompt_context(x.schedules, positive)
        return x
    if prompt_context_is_marked(x.cond):  # ScheduledPromptConditioning
        return x
    mark = torch.full_like(x.cond[:1], MARK if positive else -MARK)
    return x._replace(cond=torch.cat([mark, x.cond]))


def _hooked_unet(forward):
    def hooked(x, sigma, context):
        is_prompt = torch.ones(len(x), dtype=torch.bool)
        if prompt_context_is_marked(context):
            is_prompt, context = context[:, 0, 0] > 0, context[:, 1:]
        return forward(x, sigma, context) + CONTROL * is_prompt[:, None, None, None]
    return hooked


def install(monkeypatch, a1111):
    """Loads the fake ControlNet into fake_a1111's WebUI `a1111`: its module, the UNet hook and the
    marking of the conds that `p.sample` gets."""
    monkeypatch.setitem(sys.modules, "scripts.hook", types.SimpleNamespace(
        mark_prompt_context=mark_prompt_context, prompt_context_is_marked=prompt_context_is_marked))
    unet = a1111.sd_model.model.diffusion_model
    monkeypatch.setattr(unet, "forward", _hooked_unet(unet.forward))
    sample = a1111.processing.StableDiffusionProcessing.sample

    def marking_sample(p, conditioning, unconditional_conditioning):
        mark_prompt_context(conditioning, positive=True)
        mark_prompt_context(unconditional_conditioning, positive=False)
        return sample(p, conditioning, unconditional_conditioning)

    monkeypatch.setattr(a1111.processing.StableDiffusionProcessing, "sample", marking_sample)
