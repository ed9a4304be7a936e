"""What Forge (dfdcbab) and reForge (3b56b268) keep of A1111's WebUI around their ComfyUI-style UNet
patchers, stood in for tier-2 tests of the Forge and reForge family adapters; the backends are
`fake_forge.py` and `fake_reforge.py`. Written from those hosts' modules/processing.py,
sd_samplers_kdiffusion.py, sd_samplers_common.py and their built-in Lora extension's networks.py, cut
to what a txt2img generation with Euler and kohya LoRA files touches:

- `process_images`: per batch the host's forge objects are reset to the checkpoint's, the prompt's
  LoRA files are applied (`load_networks`: clones of the UNet and text-encoder patchers with the
  files' patches, cached by a hash of the files and weights), the conds are set up through a cache
  shared by all generations, `p.sample` runs, then post_sample and the decode; postprocess at the end.
  An exception in `p.sample` goes up without postprocess, as in the WebUI.
- `p.sample` (txt2img): a new sampler, the forge objects as the LoRA left them, the scripts'
  process_before_every_sampling, Euler; with hires fix a latent upscale and a second sampling pass on
  a new sampler with the hires conds and the hires CFG scale, whose latents are decoded before
  `p.sample` returns (Forge: process_before_every_sampling twice, before and after the forge objects
  are reset; reForge: once, after).
- the sampler: the host loads the UNet patcher before the loop (`sampling_prepare`), `launch_sampling`
  returns the last latent on an interrupt; the CFG denoiser rebuilds the step's conds, fires the
  cfg_denoiser callback and hands the call to the host's sampling function (`host.denoise`).
- the model: `tiny_unet.TinyUNet` under an eps predictor as the patcher's model (Forge's KModel,
  ldm_patched's BaseModel), the text encoder of `fake_a1111`, each under a patcher of the host.

Simplified away: samplers other than Euler, schedulers (a log-spaced sigma schedule), image
conditioning, masks and areas, the VAE (decoding only calls `p.on_decode`), clip skip, refiners,
token merging, other extra networks, ControlNet, the GPU (devices are the CPU; a host's "offload
device" is stood in by keeping backups in another dtype, see the backends).
"""
import enum
import math
import sys
import types

import safetensors.torch
import torch
from torch import nn

from tests.support import fake_a1111
from tests.support.tiny_unet import make_tiny_unet

# modules.prompt_parser: A1111's, stood in by fake_a1111 (prompt editing, AND prompts with weights)
PROMPT_PARSER = {name: getattr(fake_a1111, name) for name in (
    "get_learned_conditioning", "get_multicond_learned_conditioning", "reconstruct_cond_batch",
    "reconstruct_multicond_batch")}
HIRES_SCALE = 2  # the latent upscaler's factor

shared = host = None  # the modules.shared and the backend of the test under way, set by install()


# -- what both backends' patchers and memory managers share --

class UnetExtras:
    """What the UNet patcher (Forge's backend.patcher.unet, reForge's modules_forge.unet_patcher) adds to
    its ModelPatcher and carries over to its clones; mixed in before the backend's ModelPatcher."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):
        n = super().clone()
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class InterruptedException(BaseException):
    """sd_samplers_common's: the denoiser raises it once the user interrupted or skipped."""


class State:
    """shared.state: what the WebUI's interrupt and skip buttons set, and the sampler's step counter."""

    def __init__(self):
        self.interrupted = self.skipped = False
        self.sampling_step = self.sampling_steps = 0


# -- conditions: Forge's backend.sampling.condition, ldm_patched's conds and forge_sampler converters --

def repeat_to_batch_size(tensor, batch_size):
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.dim() - 1))[:batch_size]
    return tensor


class Condition:
    def __init__(self, cond):
        self.cond = cond

    def process_cond(self, batch_size, device, **kwargs):
        return type(self)(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [other.cond for other in others])


class ConditionCrossAttn(Condition):
    """Cross-attention conds of different token counts concatenate by repeating to their lcm."""

    def can_concat(self, other):
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 == s2:
            return True
        if s1[0] != s2[0] or s1[2] != s2[2]:
            return False
        return math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) <= 4

    def concat(self, others):
        conds = [self.cond] + [other.cond for other in others]
        tokens = math.lcm(*(c.shape[1] for c in conds))
        return torch.cat([c.repeat(1, tokens // c.shape[1], 1) for c in conds])


def compile_conditions(cond):
    """A1111's cond tensor as the patchers' cond entries (Forge: compile_conditions; reForge:
    cond_from_a1111_to_patched_ldm)."""
    if cond is None:
        return None
    return [{"cross_attn": cond, "model_conds": {"c_crossattn": ConditionCrossAttn(cond)}}]


def compile_weighted_conditions(cond, weights):
    """One entry per position of the images' AND sub-prompts, with the weight of the last image's."""
    results = []
    for position in map(list, zip(*weights)):
        h = compile_conditions(cond[[i for i, _ in position]])
        h[0]["strength"] = position[-1][1]
        results += h
    return results


def get_area_and_mult(conds, x_in, timestep):
    """The hosts' get_area_and_mult without areas, masks and timestep ranges: the whole latent, weighted
    by the entry's strength."""
    area = (x_in.shape[2], x_in.shape[3], 0, 0)
    conditioning = {key: value.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
                    for key, value in conds["model_conds"].items()}
    mult = torch.ones_like(x_in) * conds.get("strength", 1.0)
    return types.SimpleNamespace(input_x=x_in, mult=mult, conditioning=conditioning, area=area,
                                 control=conds.get("control"), patches=None)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape or c1.control is not c2.control:
        return False
    return c1.conditioning is c2.conditioning or (
        c1.conditioning.keys() == c2.conditioning.keys()
        and all(c1.conditioning[k].can_concat(c2.conditioning[k]) for k in c1.conditioning))


def cond_cat(c_list):
    keys = dict.fromkeys(k for c in c_list for k in c)
    return {k: c_list[0][k].concat([c[k] for c in c_list[1:]]) for k in keys}


def batched_model_calls(model, to_run, x_in, timestep, model_options, fits, outputs, extras=None):
    """The loop both hosts' batched evaluation shares: entries that concatenate with the first one go in
    one model call, as many as `fits(input shape)` allows (the hosts take them in reverse order); each
    chunk's output is added to `outputs[kind]` = (sum, count) with its mult. `to_run`: [(entry, kind)];
    `extras(cond_or_uncond, timestep)`: the host's own transformer options of the call."""
    while to_run:
        first = to_run[0][0]
        to_batch_temp = [i for i, (entry, _) in enumerate(to_run) if can_concat_cond(entry, first)]
        to_batch_temp.reverse()
        to_batch = to_batch_temp[:1]
        for i in range(1, len(to_batch_temp) + 1):
            amount = to_batch_temp[:len(to_batch_temp) // i]
            shape = [len(amount) * first.input_x.shape[0]] + list(first.input_x.shape[1:])
            if fits(shape):
                to_batch = amount
                break
        chosen = [to_run.pop(i) for i in to_batch]
        cond_or_uncond = [kind for _, kind in chosen]
        input_x = torch.cat([entry.input_x for entry, _ in chosen])
        c = cond_cat([entry.conditioning for entry, _ in chosen])
        timestep_ = torch.cat([timestep] * len(chosen))
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        transformer_options.update(extras(cond_or_uncond, timestep) if extras is not None else {})
        c["transformer_options"] = transformer_options
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {
                "input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        for chunk, (entry, kind) in zip(output.chunk(len(chosen)), chosen):
            outputs[kind][0].add_(chunk * entry.mult)
            outputs[kind][1].add_(entry.mult)


# -- the model --

class EpsPredictor:
    """SD1's eps prediction (Forge's k_prediction, ldm_patched's model_sampling); the tiny UNet takes
    sigma as its timestep."""

    def calculate_input(self, sigma, x):
        return x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5

    def calculate_denoised(self, sigma, model_output, x):
        return x - model_output * sigma[:, None, None, None]

    def noise_scaling(self, sigma, noise, latent_image):
        return noise * sigma + latent_image

    def timestep(self, sigma):
        return sigma


class DiffusionModel(nn.Module):
    """The UNet patcher's model (Forge's KModel, ldm_patched's BaseModel): the UNet under
    `diffusion_model`, so the patchers' keys read `diffusion_model.<layer>.weight`."""

    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet
        self.predictor = self.model_sampling = EpsPredictor()
        self.storage_dtype = self.computation_dtype = torch.float32

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        xc = self.predictor.calculate_input(t, x).to(self.computation_dtype)
        out = self.diffusion_model(xc, self.predictor.timestep(t).float(), c_crossattn.to(self.computation_dtype))
        return self.predictor.calculate_denoised(t, out.float(), x)

    def memory_required(self, input_shape):
        return 1.28 * input_shape[0] * input_shape[2] * input_shape[3] * 4 * 16384  # Forge's KModel estimate


class ForgeObjects:
    def __init__(self, unet, clip, vae=None, clipvision=None):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class Clip:
    """The text encoder under a patcher of the host (its `cond_stage_model` is the patcher's model)."""

    def __init__(self, patcher):
        self.patcher, self.cond_stage_model = patcher, patcher.model

    def clone(self):
        return Clip(self.patcher.clone())


class _Encoder:
    """`sd_model.cond_stage_model` as fake_a1111's prompt parser uses it: the hosts load the text
    encoder's patcher (merging its LoRA) before they encode."""

    def __init__(self, sd_model):
        self.sd_model = sd_model

    def encode(self, text):
        clip = self.sd_model.forge_objects.clip
        host.load_model_gpu(clip.patcher)
        return clip.cond_stage_model.encode(text)


class SdModel:
    """The checkpoint's diffusion engine: its forge objects as loaded, as the LoRA left them, and now."""

    def __init__(self, unet, clip):
        self.forge_objects = ForgeObjects(unet, clip)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        self.cond_stage_key = "txt"
        self.extra_generation_params = {}

    @property
    def cond_stage_model(self):
        return _Encoder(self)


def lora_container(sd_model):
    """A module whose names are those `write_lora` gets for kohya keys the loader below reads:
    `diffusion_model.<layer>` (UNet) and `text_encoder.<layer>`."""
    container = nn.Module()
    container.diffusion_model = sd_model.forge_objects_original.unet.model.diffusion_model
    container.text_encoder = sd_model.forge_objects_original.clip.cond_stage_model
    return container


def lora_patches(path, container):
    """A kohya LoRA/LoCon file as the hosts' LoRA loaders read it: ({UNet patcher key: value}, {text
    encoder key: value}), values ("lora", (up, down, alpha, mid, dora_scale None))."""
    groups = {}
    for key, tensor in safetensors.torch.load_file(path).items():
        layer, _, part = key.partition(".")
        groups.setdefault(layer.removeprefix("lora_unet_"), {})[part] = tensor
    names = {name.replace(".", "_"): name for name, _ in container.named_modules()}
    unet, text = {}, {}
    for layer, parts in groups.items():
        name = names[layer]
        alpha = float(parts["alpha"]) if "alpha" in parts else None
        up, down, mid = parts["lora_up.weight"], parts["lora_down.weight"], parts.get("lora_mid.weight")
        value = ("lora", (up, down, alpha, mid, None))
        if name.startswith("text_encoder."):
            text[name.removeprefix("text_encoder.") + ".weight"] = value
        else:
            unet[name + ".weight"] = value
    return unet, text


def merge_lora(patches, weight):
    """The weight with its patches [(strength, value, strength_model, offset, function)] merged, in float32
    and back to its dtype, as both hosts' merge computes "lora" patches."""
    out = weight.to(torch.float32, copy=True)
    for strength, (kind, (up, down, alpha, mid, _)), *_ in patches:
        assert kind == "lora" and mid is None, "the stand-in merges plain LoRA patches"
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        out += (strength * scale) * (up.float().flatten(1) @ down.float().flatten(1)).reshape(weight.shape)
    return out.to(weight.dtype)


# -- the built-in Lora extension --

class Networks:
    """`networks`: `loaded_networks` and `load_networks`, as Forge's and reForge's Lora extension have them."""

    def __init__(self, files):
        self.files = files  # name -> path
        self.loaded_networks = []

    def load_networks(self, names, multipliers):
        sd_model = shared.sd_model
        self.loaded_networks.clear()
        self.loaded_networks += [types.SimpleNamespace(name=name, mentioned_name=name) for name in names]
        targets = [[self.files[name], m, m, False] for name, m in zip(names, multipliers)]
        if sd_model.current_lora_hash == str(targets):
            return
        sd_model.current_lora_hash = str(targets)
        objects = sd_model.forge_objects
        objects.unet, objects.clip = sd_model.forge_objects_original.unet, sd_model.forge_objects_original.clip
        container = lora_container(sd_model)
        for filename, strength_model, strength_clip, _ in targets:
            unet_patches, text_patches = lora_patches(filename, container)
            unet, clip = objects.unet.clone(), objects.clip.clone()
            host.add_patches(unet, filename, unet_patches, strength_model)
            host.add_patches(clip.patcher, filename, text_patches, strength_clip)
            objects.unet, objects.clip = unet, clip
        sd_model.forge_objects_after_applying_lora = objects.shallow_copy()


# -- modules.sd_samplers_kdiffusion, sd_samplers_common, sd_samplers_cfg_denoiser --

def sigma_schedule(steps):
    return torch.cat([torch.logspace(1, -1, steps), torch.zeros(1)])


def sample_euler(model, x, sigmas, extra_args=None, callback=None):
    """k-diffusion's sample_euler without churn."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


class CFGDenoiser(nn.Module):
    """The frame of both hosts' CFGDenoiser.forward; `host.denoise(denoiser, params, cond_scale,
    cond_composition, s_min_uncond)` is what each does from the cfg_denoiser callback on."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler, self.p = sampler, None
        self.step, self.steps, self.total_steps = 0, None, None

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        state = shared.state
        if state.interrupted or state.skipped:
            raise InterruptedException
        cond_composition, cond = PROMPT_PARSER["reconstruct_multicond_batch"](cond, self.step)
        uncond = PROMPT_PARSER["reconstruct_cond_batch"](uncond, self.step) if uncond is not None else None
        params = types.SimpleNamespace(x=x, image_cond=image_cond, sigma=sigma, sampling_step=state.sampling_step,
                                       total_sampling_steps=state.sampling_steps, text_cond=cond, text_uncond=uncond,
                                       denoiser=self)
        shared.script_callbacks.cfg_denoiser_callback(params)
        denoised = host.denoise(self, params, cond_scale, cond_composition, s_min_uncond)
        self.sampler.last_latent = denoised
        self.step += 1
        return denoised


class KDiffusionSampler:
    def __init__(self):
        self.model_wrap_cfg = CFGDenoiser(self)
        self.sampler_extra_args, self.last_latent, self.p = None, None, None
        self.s_min_uncond = shared.opts.s_min_uncond

    def callback_state(self, d):
        shared.state.sampling_step = d["i"]

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = steps  # Euler: one denoiser call per step
        shared.state.sampling_steps, shared.state.sampling_step = steps, 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p):
        self.p = self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0

    def _run(self, p, x, sigmas, conditioning, unconditional_conditioning):
        unet = shared.sd_model.forge_objects.unet
        host.sampling_prepare(unet, x)
        self.initialize(p)
        self.last_latent = x
        self.sampler_extra_args = {"cond": conditioning, "image_cond": None, "uncond": unconditional_conditioning,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond}
        samples = self.launch_sampling(len(sigmas) - 1, lambda: sample_euler(
            self.model_wrap_cfg, x, sigmas, self.sampler_extra_args, self.callback_state))
        host.sampling_cleanup(unet)
        return samples

    def sample(self, p, x, conditioning, unconditional_conditioning):
        sigmas = sigma_schedule(p.steps)
        return self._run(p, shared.sd_model.forge_objects.unet.model.predictor.noise_scaling(
            sigmas[0], x, torch.zeros_like(x)), sigmas, conditioning, unconditional_conditioning)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps):
        """setup_img2img_steps with the steps given: `steps` denoiser calls at the tail of a longer schedule."""
        sigmas = hires_sigmas(steps, p.denoising_strength)
        xi = shared.sd_model.forge_objects.unet.model.predictor.noise_scaling(sigmas[0], noise, x)
        return self._run(p, xi, sigmas, conditioning, unconditional_conditioning)


def hires_sigmas(steps, denoising_strength):
    full = int(steps / min(denoising_strength, 0.999))
    return sigma_schedule(full)[full - steps:]


def noise(seeds, shape):
    """ImageRNG's first draw: each image's noise from its own seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])


def upscale(samples):
    return torch.nn.functional.interpolate(samples, scale_factor=HIRES_SCALE, mode="nearest")


# -- modules.processing --

class StableDiffusionProcessing:
    cached_c = cached_uc = None  # [key, conds], shared by all generations; set by install()

    def __init__(self, prompts, negative_prompts, seed=1, steps=4, cfg_scale=6.0, loras=(), n_iter=1):
        cls = StableDiffusionProcessing
        self.sd_model = shared.sd_model
        self.all_prompts, self.negative_prompts, self.seed = list(prompts), list(negative_prompts), seed
        self.prompts, self.batch_size, self.n_iter, self.iteration = list(prompts), len(prompts), n_iter, 0
        self.steps, self.cfg_scale, self.loras = steps, cfg_scale, tuple(loras)  # loras: ((name, weight), ...)
        self.extra_network_data = self.hr_extra_network_data = self.loras
        self.cached_c, self.cached_uc = cls.cached_c, cls.cached_uc
        self.extra_generation_params, self.is_hr_pass, self.sampler, self.c, self.uc = {}, False, None, None, None
        self.enable_hr, self.seeds, self.firstpass_steps = False, [], steps
        # objects with any of the script hooks process, process_before_every_sampling, post_sample, postprocess
        self.scripts = []
        self.on_decode = []  # on_decode(p, latents) runs wherever the WebUI decodes

    def run_scripts(self, hook, *args):
        for script in self.scripts:
            if hasattr(script, hook):
                getattr(script, hook)(self, *args)

    def get_conds_with_caching(self, function, prompts, steps, caches, extra_network_data, hires_steps=None):
        key = (tuple(prompts), steps, extra_network_data, hires_steps)
        for cache in caches:
            if cache[0] is not None and cache[0] == key:
                return cache[1]
        cache = caches[0]
        with shared.devices.autocast():
            cache[1] = function(shared.sd_model, prompts, steps)
        cache[0] = key
        return cache[1]

    def setup_conds(self):
        self.firstpass_steps = self.steps
        if self.cfg_scale == 1:  # Forge: no uncond at CFG 1
            self.uc = None
        else:
            self.uc = self.get_conds_with_caching(PROMPT_PARSER["get_learned_conditioning"], self.negative_prompts,
                                                  self.steps, [self.cached_uc], self.extra_network_data)
        self.c = self.get_conds_with_caching(PROMPT_PARSER["get_multicond_learned_conditioning"], self.prompts,
                                             self.steps, [self.cached_c], self.extra_network_data)

    def get_conds(self):
        return self.c, self.uc

    def decode(self, samples):
        for probe in self.on_decode:
            probe(self, samples)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_c = cached_hr_uc = None

    def __init__(self, *args, enable_hr=False, hr_cfg=None, hr_steps=None, denoising_strength=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        cls = StableDiffusionProcessingTxt2Img
        self.enable_hr, self.hr_cfg = enable_hr, self.cfg_scale if hr_cfg is None else hr_cfg
        self.hr_second_pass_steps, self.denoising_strength = hr_steps, denoising_strength
        self.cached_hr_c, self.cached_hr_uc = cls.cached_hr_c, cls.cached_hr_uc
        self.hr_c = self.hr_uc = None

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        hires_steps = self.hr_second_pass_steps or self.steps
        if self.hr_cfg == 1:
            self.hr_uc = None
        else:
            self.hr_uc = self.get_conds_with_caching(PROMPT_PARSER["get_learned_conditioning"], self.negative_prompts,
                                                     self.firstpass_steps, [self.cached_hr_uc, self.cached_uc],
                                                     self.hr_extra_network_data, hires_steps)
        self.hr_c = self.get_conds_with_caching(PROMPT_PARSER["get_multicond_learned_conditioning"], self.prompts,
                                                self.firstpass_steps, [self.cached_hr_c, self.cached_c],
                                                self.hr_extra_network_data, hires_steps)

    def setup_conds(self):
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_uc = self.hr_c = None
        if self.enable_hr:
            self.calculate_hr_conds()

    def get_conds(self):
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else super().get_conds()

    def sample(self, conditioning, unconditional_conditioning):
        sd_model = self.sd_model
        self.sampler = KDiffusionSampler()
        x = noise(self.seeds, (4, 8, 8))
        sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
        self.run_scripts("process_before_every_sampling")
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples):
        """The hires pass on latents upscaled by a latent upscaler; returns them decoded (`already_decoded`)."""
        sd_model = self.sd_model
        if shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = KDiffusionSampler()
        samples = upscale(samples)
        hires_noise = noise(self.seeds, samples.shape[1:])
        activate(self, self.hr_extra_network_data)
        self.calculate_hr_conds()
        if host.prepares_hires_twice:  # Forge: before_hr and the hook on the forge objects as they are
            self.run_scripts("process_before_every_sampling")
        sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
        self.run_scripts("process_before_every_sampling")
        samples = self.sampler.sample_img2img(self, samples, hires_noise, self.hr_c, self.hr_uc,
                                              self.hr_second_pass_steps or self.steps)
        self.sampler = None
        self.decode(samples)  # decode_latent_batch: the samples come back decoded
        self.is_hr_pass = False
        return samples.as_subclass(Decoded)


class Decoded(torch.Tensor):
    """The hires pass's samples, already decoded (the stand-in's decode is the identity)."""
    already_decoded = True


def activate(p, extra_network_data):
    """extra_networks.activate for the Lora extension: its networks, or none (it is called anyway)."""
    names = [name for name, _ in extra_network_data]
    shared.networks.load_networks(names, [weight for _, weight in extra_network_data])


def process_images(p):
    """process_images_inner for txt2img: the scripts' hooks around each batch's sampling."""
    sd_model, state = p.sd_model, shared.state
    p.run_scripts("process")
    results = []
    with torch.inference_mode():
        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted:
                break
            sd_model.forge_objects = sd_model.forge_objects_original.shallow_copy()
            p.seeds = [p.seed + n * p.batch_size + i for i in range(p.batch_size)]
            activate(p, p.extra_network_data)
            sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
            p.setup_conds()
            samples = p.sample(p.c, p.uc)
            p.run_scripts("post_sample", samples)
            if not getattr(samples, "already_decoded", False):
                p.decode(samples)
            results.append(samples.as_subclass(torch.Tensor))
    p.run_scripts("postprocess", results)
    return torch.cat(results)


# -- installing --

def _module(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _package(name, children):
    """A package module whose attributes are its children in `children` ({full name: module})."""
    prefix = name + "."
    return _module(name, __path__=[], **{k[len(prefix):]: v for k, v in children.items()
                                         if k.startswith(prefix) and "." not in k[len(prefix):]})


def install(monkeypatch, backend, backend_modules, unet_patcher, clip_patcher):
    """Fresh modules of the WebUI in sys.modules around `backend` (the host's fake: `add_patches`,
    `load_model_gpu`, `sampling_prepare`, `sampling_cleanup`, `denoise`, `prepares_hires_twice`) and its
    own modules ({name: module}); `unet_patcher(model)` and `clip_patcher(text encoder)` make the
    checkpoint's patchers. Returns the world: modules, sd_model, networks, state, callbacks."""
    global shared, host
    host = backend
    torch.manual_seed(0)
    text_encoder = fake_a1111.TextEncoder().requires_grad_(False)
    sd_model = SdModel(unet_patcher(DiffusionModel(make_tiny_unet()).requires_grad_(False)),
                       Clip(clip_patcher(text_encoder)))
    for cls, names in ((StableDiffusionProcessing, ("cached_c", "cached_uc")),
                       (StableDiffusionProcessingTxt2Img, ("cached_hr_c", "cached_hr_uc"))):
        for name in names:
            setattr(cls, name, [None, None])
    networks = Networks({})
    callbacks, errors, cfg_denoiser_callback = fake_a1111.denoiser_callbacks()
    script_callbacks = _module("modules.script_callbacks", cfg_denoiser_callback=cfg_denoiser_callback,
                               on_cfg_denoiser=lambda callback, *, name=None: callbacks.append(callback),
                               callbacks=callbacks, errors=errors)
    opts = types.SimpleNamespace(skip_early_cond=0.0, s_min_uncond=0.0, s_min_uncond_all=False,
                                 data_labels={"s_min_uncond_all": None}, data={})
    shared = _module("modules.shared", sd_model=sd_model, opts=opts, state=State(),
                     script_callbacks=script_callbacks, networks=networks,
                     devices=_module("modules.devices", autocast=lambda disable=False: torch.autocast("cpu",
                                                                                                    enabled=False)))
    this = sys.modules[__name__]
    modules = {
        "modules.shared": shared, "modules.devices": shared.devices, "modules.script_callbacks": script_callbacks,
        "modules.prompt_parser": _module("modules.prompt_parser", **PROMPT_PARSER),
        "modules.processing": _module("modules.processing", StableDiffusionProcessing=StableDiffusionProcessing,
                                      StableDiffusionProcessingTxt2Img=StableDiffusionProcessingTxt2Img,
                                      process_images=process_images),
        "modules.sd_samplers_common": _module("modules.sd_samplers_common", InterruptedException=InterruptedException),
        "networks": _module("networks", loaded_networks=networks.loaded_networks, load_networks=networks.load_networks),
        **backend_modules,
    }
    packages = {name.rsplit(".", i)[0] for name in modules for i in range(1, name.count(".") + 1)}
    for name in sorted(packages, key=lambda package: package.count("."), reverse=True):
        if name not in modules:
            modules[name] = _package(name, modules)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(modules=modules, sd_model=sd_model, networks=networks, shared=shared,
                                 state=shared.state, opts=opts, callbacks=callbacks, callback_errors=errors,
                                 text_encoder=text_encoder, processing=this)
