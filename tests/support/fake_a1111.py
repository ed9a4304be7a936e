"""A small stand-in for what lib_autolora.hosts (common, a1111) imports from AUTOMATIC1111's
WebUI (v1.10.1), written from its behaviour (no WebUI code), for tier-2 tests: prompt schedules
(`[a:b:N]`) and AND sub-prompts (`:weight`); `setup_conds` through a cache shared by all generations,
encoding with a tiny text encoder of torch layers; a CFGDenoiser whose `forward` has the real one's
structure (cond rows then uncond rows, the cfg_denoiser callback, one call or chunks, skipped uncond,
padding, the combine) around an nn.Module inner model wrapping `tiny_unet.TinyUNet`; and `networks`,
whose `loaded_networks` `a1111_like_lora.LoraHost` merges. `install(monkeypatch)` puts fresh modules
into `sys.modules` (this module serves as prompt_parser, processing and sd_samplers_cfg_denoiser).
"""
import collections
import contextlib
import math
import re
import sys
import types
import zlib

import torch
from torch import nn

from tests.support.a1111_like_lora import LoraHost
from tests.support.tiny_unet import make_tiny_unet

CHUNK = 4  # tokens per prompt chunk (A1111: 77); longer prompts take more chunks

# -- modules.prompt_parser --

ScheduledPromptConditioning = collections.namedtuple("ScheduledPromptConditioning", "end_at_step cond")
ComposableScheduledPromptConditioning = collections.namedtuple("Composable", "schedules weight")
MulticondLearnedConditioning = collections.namedtuple("MulticondLearnedConditioning", "shape batch")
devices = shared = script_callbacks = None  # the fake modules of the test under way, set by install()


def _schedule(prompt, steps):
    """[(end_at_step, text)]: "a [cat:dog:2]" is "a cat" up to step 2, "a dog" after."""
    edit = re.search(r"\[([^:\]]*):([^:\]]*):(\d+)\]", prompt)
    if edit is None:
        return [(steps, prompt)]
    before, after = (prompt[:edit.start()] + part + prompt[edit.end():] for part in edit.group(1, 2))
    return [(int(edit[3]), before), (steps, after)]


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    encode = model.cond_stage_model.encode
    return [[ScheduledPromptConditioning(end, encode(text)) for end, text in _schedule(prompt, steps)]
            for prompt in prompts]


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    batch = []
    for prompt in prompts:
        parts = [re.fullmatch(r"\s*(.*?)\s*(?::\s*([-+]?[\d.]+))?\s*", part).groups()
                 for part in re.split(r"\bAND\b", prompt)]
        batch.append([ComposableScheduledPromptConditioning(get_learned_conditioning(model, [text], steps)[0],
                                                            float(weight or 1))
                      for text, weight in parts])
    return MulticondLearnedConditioning((len(prompts),), batch)


def _at_step(schedules, step):
    return next((entry.cond for entry in schedules if step <= entry.end_at_step), schedules[0].cond)


def reconstruct_cond_batch(c, step):
    return torch.stack([_at_step(schedules, step) for schedules in c])


def reconstruct_multicond_batch(c, step):
    """(conds_list: per image [(row, weight)], the rows stacked)."""
    conds_list, rows = [], []
    for composable in c.batch:
        conds_list.append([(len(rows) + i, prompt.weight) for i, prompt in enumerate(composable)])
        rows += [_at_step(prompt.schedules, step) for prompt in composable]
    tokens = max(row.shape[0] for row in rows)
    return conds_list, torch.stack([torch.cat([r, r[-1:].expand(tokens - r.shape[0], -1)]) for r in rows])


# -- modules.sd_samplers_cfg_denoiser --

catenate_conds = torch.cat  # SD1 conds are tensors (SDXL's dicts are not faked)
subscript_cond = lambda cond, a, b: cond[a:b]  # noqa: E731


class CompVisDenoiser(nn.Module):
    """k-diffusion's wrapper of an eps model: x0 prediction from (x, sigma, cond)."""

    def __init__(self, sd_model):
        super().__init__()
        self.inner_model = sd_model

    def forward(self, x, sigma, cond):
        s = sigma[:, None, None, None]
        return x - s * self.inner_model.apply_model(x / (s ** 2 + 1) ** 0.5, sigma, cond)


class CFGDenoiser(nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.sampler, self.model_wrap, self.p = sampler, None, None
        self.step, self.total_steps, self.cond_scale_miltiplier = 0, None, 1.0

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisDenoiser(shared.sd_model)
        return self.model_wrap

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        uncond_out = x_out[-uncond.shape[0]:]
        denoised = uncond_out.clone()
        for image, conds in enumerate(conds_list):
            for row, weight in conds:
                denoised[image] += (x_out[row] - uncond_out[image]) * (weight * cond_scale)
        return denoised

    def pad_cond_uncond(self, cond, uncond):
        """Pads the shorter of the two with the empty prompt's chunk."""
        empty = shared.sd_model.cond_stage_model_empty_prompt
        repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        pad = lambda t, n: torch.cat([t, empty.repeat(t.shape[0], n, 1)], dim=1)  # noqa: E731
        return (pad(cond, -repeats), uncond) if repeats < 0 else (cond, pad(uncond, repeats))

    def pad_cond_uncond_v0(self, cond, uncond):
        """Repeats the uncond's last vector up to the cond's length, or cuts it there."""
        missing = cond.shape[1] - uncond.shape[1]
        if missing > 0:
            return cond, torch.cat([uncond, uncond[:, -1:].repeat(1, missing, 1)], 1)
        return cond, uncond[:, :cond.shape[1]]

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        opts = shared.opts
        conds_list, tensor = reconstruct_multicond_batch(cond, self.step)
        uncond = reconstruct_cond_batch(uncond, self.step)
        batch_size = len(conds_list)
        repeats = torch.tensor([i for i, conds in enumerate(conds_list) for _ in conds])  # an image once per cond row
        x_in, sigma_in, image_cond_in = (torch.cat([t[repeats], t]) for t in (x, sigma, image_cond))
        params = script_callbacks.CFGDenoiserParams(
            x=x_in, image_cond=image_cond_in, sigma=sigma_in, sampling_step=self.step,
            total_sampling_steps=self.total_steps, text_cond=tensor, text_uncond=uncond, denoiser=self)
        script_callbacks.cfg_denoiser_callback(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        tensor, uncond = params.text_cond, params.text_uncond

        skip_uncond = opts.skip_early_cond != 0 and self.step / self.total_steps <= opts.skip_early_cond
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]
        if opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        def run(a, b, text):
            cond = {"c_crossattn": [text], "c_concat": [image_cond_in[a:b]]}
            return self.inner_model(x_in[a:b], sigma_in[a:b], cond=cond)

        x_out = torch.zeros_like(x_in)
        if skip_uncond or tensor.shape[1] == uncond.shape[1]:
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            chunk = len(x_in) if opts.batch_cond_uncond else batch_size
            for a in range(0, len(x_in), chunk):
                x_out[a:a + chunk] = run(a, a + chunk, subscript_cond(cond_in, a, a + chunk))
        else:  # prompt and negative prompt of different lengths: cond rows in chunks, then the uncond rows
            chunk = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, len(tensor), chunk):
                b = min(a + chunk, len(tensor))
                x_out[a:b] = run(a, b, subscript_cond(tensor, a, b))
            x_out[-len(uncond):] = run(len(x_in) - len(uncond), len(x_in), uncond)
        if skip_uncond:  # each image's first cond result stands in for its uncond
            x_out = torch.cat([x_out] + [x_out[conds[0][0]:conds[0][0] + 1] for conds in conds_list])
        scale = 1.0 if skip_uncond else cond_scale * self.cond_scale_miltiplier
        denoised = self.combine_denoised(x_out, conds_list, uncond, scale)
        self.step += 1
        return denoised


# -- modules.processing --

class Sampler:
    """A k-diffusion sampler's frame: the CFG denoiser, and `launch_sampling`, which runs the sampling loop."""

    def __init__(self):
        self.model_wrap_cfg = CFGDenoiser(self)

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.total_steps = steps
        return func()


class StableDiffusionProcessing:
    # [cache key, conds], shared by all generations; set by install()
    cached_c = cached_uc = cached_hr_c = cached_hr_uc = None

    def __init__(self, prompts, negative_prompts, seed=1, steps=6, cfg_scale=6.0, extra_network_data=(),
                 enable_hr=False):
        self.prompts, self.negative_prompts, self.seed = prompts, negative_prompts, seed
        self.steps, self.cfg_scale, self.enable_hr = steps, cfg_scale, enable_hr
        self.extra_network_data = extra_network_data  # the prompt's <lora:...> tags: part of the cache key
        cls = StableDiffusionProcessing
        self.cached_c, self.cached_uc = cls.cached_c, cls.cached_uc
        self.cached_hr_c, self.cached_hr_uc = cls.cached_hr_c, cls.cached_hr_uc
        self.extra_generation_params, self.is_hr_pass, self.sampler, self.c, self.uc = {}, False, None, None, None
        self.hr_c = self.hr_uc = None
        self.before_every_sampling = []  # the scripts' process_before_every_sampling
        self.on_decode = []  # called with the samples wherever the WebUI VAE-decodes them

    def get_conds_with_caching(self, function, prompts, steps, caches, extra_network_data):
        key = (tuple(prompts), steps, extra_network_data)
        for cache in caches:
            if cache[0] == key:
                return cache[1]
        with devices.autocast():
            caches[0][:] = [key, function(shared.sd_model, prompts, steps)]
        return caches[0][1]

    def setup_conds(self):
        networks = self.extra_network_data
        self.uc = self.get_conds_with_caching(get_learned_conditioning, self.negative_prompts, self.steps,
                                              [self.cached_uc], networks)
        self.c = self.get_conds_with_caching(get_multicond_learned_conditioning, self.prompts, self.steps,
                                             [self.cached_c], networks)

    def calculate_hr_conds(self):
        networks = self.extra_network_data
        self.hr_uc = self.get_conds_with_caching(get_learned_conditioning, self.negative_prompts, self.steps,
                                                 [self.cached_hr_uc], networks)
        self.hr_c = self.get_conds_with_caching(get_multicond_learned_conditioning, self.prompts, self.steps,
                                                [self.cached_hr_c], networks)

    def get_conds(self):
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else (self.c, self.uc)

    def decode(self, samples):
        """Where the WebUI decodes latents with the VAE (between the passes of hires fix, after sampling)."""
        for probe in self.on_decode:
            probe(self, samples)

    def sample(self, conditioning, unconditional_conditioning):
        """txt2img's: a new sampler, the scripts' hook, then (Euler) sampling as the sampler sets it up; with
        hires fix the first pass's latents decoded, then the hires pass on a new sampler (fewer sigmas)."""
        x = torch.randn(len(self.prompts), 4, 8, 8, generator=torch.Generator().manual_seed(self.seed))
        sigmas = torch.cat([torch.logspace(1, -1, self.steps), torch.zeros(1)])
        samples = self._sample_pass(x * sigmas[0], sigmas, conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        self.decode(samples)  # a non-latent upscaler's input
        self.is_hr_pass = True
        self.calculate_hr_conds()
        sigmas = sigmas[self.steps // 2:]
        samples = self._sample_pass(samples + x * sigmas[0], sigmas, self.hr_c, self.hr_uc)
        self.is_hr_pass = False
        return samples

    def _sample_pass(self, x, sigmas, conditioning, unconditional_conditioning):
        self.sampler = Sampler()
        denoiser = self.sampler.model_wrap_cfg
        for hook in self.before_every_sampling:
            hook(self)
        denoiser.p, denoiser.step = self, 0

        def loop(x=x):
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                denoised = denoiser(x, s.repeat(len(x)), uncond=unconditional_conditioning, cond=conditioning,
                                    cond_scale=self.cfg_scale, s_min_uncond=0.0,
                                    image_cond=x.new_zeros(len(x), 5, 1, 1))
                x = x + (x - denoised) / s * (s_next - s)
            return x
        return self.sampler.launch_sampling(len(sigmas) - 1, loop)


# -- the model: a text encoder and a UNet --

class TextEncoder(nn.Module):
    def __init__(self, dim=24, vocab=97):
        super().__init__()
        self.vocab = vocab
        self.token_embedding = nn.Embedding(vocab, dim)
        self.layers = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.final_layer_norm = nn.LayerNorm(dim)

    def encode(self, text):
        """[tokens, dim], tokens a multiple of CHUNK; word ids from a stable hash, 0 pads."""
        ids = [zlib.crc32(word.encode()) % (self.vocab - 1) + 1 for word in text.split()]
        ids += [0] * (CHUNK * max(1, math.ceil(len(ids) / CHUNK)) - len(ids))
        h = self.token_embedding(torch.tensor(ids)) + torch.linspace(0, 1, len(ids))[:, None]
        return self.final_layer_norm(h + self.layers(h))


class SdModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = make_tiny_unet()
        self.model.conditioning_key = "crossattn"
        self.cond_stage_model = TextEncoder()
        self.cond_stage_key = "txt"
        self.requires_grad_(False)
        self.cond_stage_model_empty_prompt = self.cond_stage_model.encode("")[None]

    def apply_model(self, x, sigma, cond):
        return self.model.diffusion_model(x, sigma, cond["c_crossattn"][0])


def _module(name, **attributes):
    module = types.ModuleType(name)
    return module.__dict__.update(attributes) or module


def denoiser_callbacks():
    """(callbacks, errors, fire): the on_cfg_denoiser callbacks, the exceptions they raised, and the
    WebUI's cfg_denoiser_callback, which reports a callback's exception and samples on."""
    callbacks, errors = [], []

    def fire(params):
        for callback in callbacks:
            try:
                callback(params)
            except Exception as error:  # noqa: BLE001
                errors.append(error)

    return callbacks, errors, fire


def install(monkeypatch, backup_dtype=None):
    """Fresh fake modules in sys.modules; returns them with the model and its Lora host (`backup_dtype`:
    see LoraHost)."""
    global devices, shared, script_callbacks
    sd_model = SdModel()
    lora = LoraHost(sd_model, backup_dtype)
    sd_model.network_layer_mapping = lora.layers
    cls = StableDiffusionProcessing
    for cache in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
        setattr(cls, cache, [None, None])
    devices = _module("modules.devices", autocast=lambda disable=False: contextlib.nullcontext())
    shared = _module("modules.shared", sd_model=sd_model, opts=types.SimpleNamespace(
        batch_cond_uncond=True, pad_cond_uncond=False, pad_cond_uncond_v0=False, skip_early_cond=0.0, data={}))
    callbacks, errors, cfg_denoiser_callback = denoiser_callbacks()
    script_callbacks = _module("modules.script_callbacks", CFGDenoiserParams=types.SimpleNamespace, errors=errors,
                               cfg_denoiser_callback=cfg_denoiser_callback,
                               on_cfg_denoiser=lambda callback, *, name=None: callbacks.append(callback))
    this = sys.modules[__name__]
    fakes = {
        "modules.devices": devices, "modules.shared": shared, "modules.script_callbacks": script_callbacks,
        "modules.prompt_parser": this, "modules.processing": this, "modules.sd_samplers_cfg_denoiser": this,
        "networks": _module("networks", loaded_networks=lora.loaded_networks),
    }
    fakes["modules"] = _module("modules", __path__=[], **{k.split(".")[1]: v for k, v in fakes.items() if "." in k})
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(sd_model=sd_model, lora=lora, shared=shared, callback_errors=errors,
                                 networks=fakes["networks"], processing=this)
