"""What the tier-2 generation tests of the patcher hosts (test_forge_generation.py on fake_forge,
test_reforge_generation.py on fake_reforge) share: the WebUI's txt2img request with AutoLoRA's
script in it (the hooks of scripts/autolora.py, through lib_autolora.webui.lifecycle), the reference
that computes AutoLoRA's result from its definition on separately run models, and the host's state
that must be as it was after a generation."""
import collections
import contextlib
import copy
import gc
import importlib
import sys

import pytest
import torch

from lib_autolora.webui import lifecycle
from tests.support import fake_patcher_webui as webui
from tests.support.kohya_files import write_lora
from tests.support.tiny_unet import LORA_LAYERS

CFG, HR_CFG = 6.0, 4.5
STEPS, HR_STEPS = 4, 3
PROMPTS = ["a cat AND a red hat :0.5", "a [dog:fox:2] AND a blue hat :0.7"]  # AND prompts, prompt editing
SIMPLE_PROMPTS = ["a cat", "a [dog:fox:2]"]  # one cond row per image
OTHER_PROMPTS = ["a bird on a branch", "a fish"]
NEGATIVES = ["blurry", "ugly"]
LORA_FILE_LAYERS = ["text_encoder.layers.0", "text_encoder.layers.2"] + ["diffusion_model." + n for n in LORA_LAYERS]
COMMON_MODULES = ("lib_autolora.hosts.a1111_api", "lib_autolora.hosts.patcher.generation")  # import the WebUI's
Run = collections.namedtuple("Run", "samples p generation")


def drop_modules(names):
    for name in names:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], child):
            delattr(sys.modules[parent], child)


@contextlib.contextmanager
def world_with_adapter(world, adapter, class_name, tmp_path):
    """The installed stand-in with the adapter imported against it (modules that import the WebUI's
    dropped first), the script's callback registered and the LoRA file `style` on the UNet and text
    encoder; one torch thread while it is used, the adapter dropped again afterwards."""
    world.adapter_modules = COMMON_MODULES + (adapter,)
    drop_modules(world.adapter_modules)
    world.generation_class = getattr(importlib.import_module(adapter), class_name)
    world.on_cfg_denoiser = world.modules["modules.script_callbacks"].on_cfg_denoiser
    world.on_cfg_denoiser(lifecycle.on_cfg_denoiser)  # as scripts/autolora.py does
    world.networks.files["style"] = write_lora(tmp_path / "style.safetensors", webui.lora_container(world.sd_model),
                                               LORA_FILE_LAYERS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's calls gain nothing from more, and lose much on a busy machine
    yield world
    torch.set_num_threads(threads)
    drop_modules(world.adapter_modules)
    assert not world.callback_errors, "the cfg_denoiser callback raised (the WebUI would only log it)"


class AutoLoraScript:
    """scripts/autolora.py's hooks as the WebUI calls them; keeps the Generation postprocess finishes."""

    def __init__(self, world, args):
        self.world, self.args, self.generation = world, args, None

    def process(self, p):
        lifecycle.begin(p, self.args, self.world.opts, self.world.generation_class)

    def process_before_every_sampling(self, p):
        lifecycle.prepare_pass(p)

    def post_sample(self, p, samples):
        lifecycle.end_sampling(p)

    def postprocess(self, p, results):
        self.generation = lifecycle.generation_of(p)
        lifecycle.finish(p, self.world.state)


def processing(world, prompts=PROMPTS, lora=True, hires=False, n_iter=1):
    return world.processing.StableDiffusionProcessingTxt2Img(
        prompts, NEGATIVES, seed=1, steps=STEPS, cfg_scale=CFG, loras=(("style", 1.0),) if lora else (),
        n_iter=n_iter, enable_hr=hires, hr_cfg=HR_CFG, hr_steps=HR_STEPS)


def generate(world, args=None, prompts=PROMPTS, lora=True, hires=False, n_iter=1, scripts=(), on_decode=None):
    """A txt2img request as the WebUI runs it; AutoLoRA's script in it with `args` (a list)."""
    p = processing(world, prompts, lora, hires, n_iter)
    script = AutoLoraScript(world, args) if args is not None else None
    p.scripts = ([script] if script else []) + list(scripts)
    if on_decode is not None:
        p.on_decode.append(on_decode)
    samples = world.processing.process_images(p)
    return Run(samples, p, script.generation if script else None)


def unet(world):
    return world.sd_model.forge_objects_original.unet.model.diffusion_model


def unet_calls(world):
    """The batch size of every UNet evaluation from now on."""
    calls = []
    unet(world).register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    return calls


def fail_at_unet_call(world, number, error):
    """Raises `error` in the `number`th UNet evaluation from now on (1 = the next); returns the hook."""
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) == number:
            raise error
    return unet(world).register_forward_pre_hook(hook)


def held(p):
    """What AutoLoRA's network switch holds for the generation of `p` now (bytes)."""
    generation = lifecycle.generation_of(p)
    return generation.switch.held_bytes() if generation is not None and generation.switch is not None else 0


# -- the reference: the formula on separately run base and LoRA models --

def reference(world, gamma, w1, w2, prompts=PROMPTS, hires=False, n_iter=1, hires_params=None):
    """AutoLoRA's result from its definition, without AutoLoRA: at each Euler step the host's own CFG
    denoiser runs the model without the LoRA (the checkpoint's patcher, the conds encoded without the
    LoRA) at w1 and the LoRA model (the patcher and conds the LoRA gave) at w2, each loaded by the
    host's memory manager, and the step takes cfg(base, w1) + gamma * (cfg(lora, w2) - cfg(base, w1)).
    None for w1/w2: the pass's CFG scale; `hires_params` (gamma, w1, w2) of the hires pass where they differ."""
    models = {}
    for name, lora in (("lora", True), ("base", False)):  # the patcher and conds of a plain generation
        run = generate(world, prompts=prompts, lora=lora, hires=hires)
        models[name] = (world.sd_model.forge_objects_after_applying_lora.unet, run.p)
    p = processing(world, prompts, hires=hires)
    out = []
    with torch.inference_mode():
        for n in range(n_iter):
            seeds = [p.seed + n * p.batch_size + i for i in range(p.batch_size)]
            sigmas = webui.sigma_schedule(STEPS)
            x = webui.noise(seeds, (4, 8, 8)) * sigmas[0]
            x = _reference_pass(world, models, seeds, x, sigmas, CFG, (gamma, w1, w2), False)
            if hires:
                sigmas = webui.hires_sigmas(HR_STEPS, p.denoising_strength)
                x = webui.upscale(x)
                x = x + webui.noise(seeds, x.shape[1:]) * sigmas[0]
                x = _reference_pass(world, models, seeds, x, sigmas, HR_CFG, hires_params or (gamma, w1, w2), True)
            out.append(x)
    return torch.cat(out)


def _reference_pass(world, models, seeds, x, sigmas, scale, params, is_hr_pass):
    gamma, w1, w2 = params
    denoisers = {}
    for name, (patcher, run_p) in models.items():
        sampler = webui.KDiffusionSampler()
        sampler.sampler_extra_args = {"s_min_uncond": 0.0, "cond_scale": scale}
        denoiser = sampler.model_wrap_cfg
        denoiser.p = copy.copy(run_p)
        denoiser.p.seeds, denoiser.p.is_hr_pass = seeds, is_hr_pass
        denoiser.total_steps = len(sigmas) - 1
        denoisers[name] = (patcher, denoiser, (run_p.hr_c, run_p.hr_uc) if is_hr_pass else (run_p.c, run_p.uc))

    def guided(name, x, sigma, w):
        patcher, denoiser, (c, uc) = denoisers[name]
        world.sd_model.forge_objects.unet = patcher
        webui.host.sampling_prepare(patcher, x)
        denoiser.p.hr_cfg = scale if w is None else w  # the hires pass takes its scale from p
        return denoiser(x, sigma, uncond=uc, cond=c, cond_scale=denoiser.p.hr_cfg, s_min_uncond=0.0, image_cond=None)

    def model(x, sigma):
        base, lora = guided("base", x, sigma, w1), guided("lora", x, sigma, w2)
        return base + gamma * (lora - base)

    return webui.sample_euler(model, x, sigmas)


# -- the host's state, for what must be as it was --

def patchers(world):
    """Every UNet and text-encoder patcher the host holds now (its forge objects, its loaded models)."""
    sd_model = world.sd_model
    found = []
    for objects in (sd_model.forge_objects, sd_model.forge_objects_original,
                    sd_model.forge_objects_after_applying_lora):
        found += [objects.unet, objects.clip.patcher]
    return list({id(patcher): patcher for patcher in found + world.loaded_patchers()}.values())


def host_state(world):
    """What a generation must leave as it found it; taken after a garbage collection (reForge's memory
    manager holds its patchers weakly: once a clone is gone, its entry holds the clone's parent)."""
    gc.collect()
    sd_model = world.sd_model
    objects = sd_model.forge_objects
    return {
        "UNet parameters": {name: (p, p.detach().clone()) for name, p in
                            sd_model.forge_objects_original.unet.model.named_parameters()},
        "UNet backups": world.backups(),
        "patchers": {id(patcher): (patcher, copy.copy(world.patches_of(patcher)), copy.deepcopy(patcher.model_options))
                     for patcher in patchers(world)},
        "forge objects": (objects.unet, objects.clip, sd_model.forge_objects_after_applying_lora.unet,
                          sd_model.forge_objects_after_applying_lora.clip),
        "loaded networks": [n.name for n in world.networks.loaded_networks],
        "callbacks": list(world.callbacks),
        "cond caches": [list(getattr(cls, name)) for cls, name in (
            (world.processing.StableDiffusionProcessing, "cached_c"),
            (world.processing.StableDiffusionProcessing, "cached_uc"))],
    }


def assert_host_as_before(world, before):
    """The UNet's Parameters (the very objects and their values), its backups, every patcher's patches and
    model options, the forge objects, the loaded networks, callbacks and cond caches are as in `before`.
    A patcher that is new (one the memory manager keeps loaded: AutoLoRA's clone) holds nothing but what
    the LoRA's own patcher holds (AutoLoRA's emptied hook lists aside): no hook left for the host to run."""
    now = host_state(world)
    assert now["UNet parameters"].keys() == before["UNet parameters"].keys()
    for name, (parameter, values) in before["UNet parameters"].items():
        assert now["UNet parameters"][name][0] is parameter, f"{name} is another Parameter"
        assert torch.equal(now["UNet parameters"][name][1], values), f"{name} holds other values"
    for key in ("UNet backups", "forge objects", "loaded networks", "callbacks", "cond caches"):
        assert now[key] == before[key], key
    lora_patcher = world.sd_model.forge_objects_after_applying_lora.unet
    for key, (_, patches, options) in now["patchers"].items():
        if key in before["patchers"]:
            assert (patches, options) == before["patchers"][key][1:], "a patcher's patches or options changed"
        else:
            assert patches == world.patches_of(lora_patcher)
            assert {k: v for k, v in options.items() if v != []} == lora_patcher.model_options, options


def plain_generations(world):
    """Plain LoRA generations of the test prompts and of other prompts (which the LoRA's text encoder encodes)."""
    return {tuple(prompts): generate(world, prompts=prompts).samples for prompts in (OTHER_PROMPTS, PROMPTS)}


def assert_next_generations_as_before(world, before_samples):
    for prompts, samples in before_samples.items():
        assert torch.equal(generate(world, prompts=list(prompts)).samples, samples), prompts


def interrupt_at(world, step):
    """A cfg_denoiser callback after AutoLoRA's: the user's interrupt lands while first-pass step `step`
    runs, so the next denoiser call stops the sampling. Returns the callback, to remove afterwards."""
    def interrupt(params):
        if params.denoiser.step == step and not params.denoiser.p.is_hr_pass:
            world.state.interrupted = True
    world.on_cfg_denoiser(interrupt)
    return interrupt


def held_while_sampling_and_after(world, args, **request):
    """(bytes the switch held at each denoiser call, by pass (False: first, True: hires), [(where, bytes)] at
    each decode and post_sample after AutoLoRA's) of one generation."""
    while_sampling, after = collections.defaultdict(list), []

    def record(params):
        while_sampling[params.denoiser.p.is_hr_pass].append(held(params.denoiser.p))

    world.on_cfg_denoiser(record)
    probe = type("Probe", (), {"post_sample": lambda self, p, samples: after.append(("post_sample", held(p)))})()
    generate(world, args, scripts=[probe], on_decode=lambda p, samples: after.append(("decode", held(p))), **request)
    world.callbacks.remove(record)
    return while_sampling, after


def check_an_error_in_the_base_pass(world, memory, capsys):
    """An error in the base pass at step 1 fails the generation and leaves the host as it was."""
    plain = plain_generations(world)
    before = host_state(world)
    hook = fail_at_unet_call(world, 4, RuntimeError("out of memory"))  # step 1: the LoRA call, then the base call
    with pytest.raises(RuntimeError, match="out of memory"):  # the WebUI skips postprocess
        generate(world, [{"gamma": 1.5, "memory": memory}])
    hook.remove()
    assert "AutoLoRA: the base pass at step 1 failed" in capsys.readouterr().out
    assert_host_as_before(world, before)
    assert_next_generations_as_before(world, plain)


def check_an_interrupt(world, memory, hires, capsys):
    """An interrupt at step 2 of a batch count of 2 stops the generation and leaves the host as it was."""
    plain = plain_generations(world)
    before = host_state(world)
    interrupt = interrupt_at(world, 2)
    run = generate(world, [{"gamma": 1.5, "memory": memory}], hires=hires, n_iter=2)
    world.callbacks.remove(interrupt)
    world.state.interrupted = False  # the next job starts afresh
    assert len(run.samples) == len(PROMPTS), "the second batch must not start"
    assert "Sampling was interrupted after denoiser step 2" in capsys.readouterr().out
    assert_host_as_before(world, before)
    assert_next_generations_as_before(world, plain)


def check_gamma_one_is_plain(world, args, hires, n_iter):
    """gamma 1 with w2 at the CFG scale: plain LoRA generation bit for bit, with no model call of its own."""
    calls = unet_calls(world)
    plain = generate(world, hires=hires, n_iter=n_iter)
    plain_calls, calls[:] = list(calls), []
    run = generate(world, [args], hires=hires, n_iter=n_iter)
    assert torch.equal(run.samples, plain.samples)
    assert calls == plain_calls, "gamma 1 ran model calls the plain generation does not"
