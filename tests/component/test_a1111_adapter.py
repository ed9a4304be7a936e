"""Tier 2: the A1111 adapter (lib_autolora.webui.lifecycle + lib_autolora.hosts.a1111) driven through
its script hooks on a fake WebUI (fake_a1111): a CFG denoiser built like A1111's around a small UNet,
a text encoder of torch layers and a kohya LoRA on both, merged by a stand-in for the Lora extension."""
import collections
import contextlib
import copy
import functools
import importlib
import sys

import pytest
import torch

from lib_autolora.core.guidance import Passes
from lib_autolora.core.params import AutoLoraParamError, AutoLoraParams
from lib_autolora.hosts.layers import layer_off
from lib_autolora.webui import lifecycle
from tests.support import fake_a1111
from tests.support.a1111_like_lora import load_kohya
from tests.support.kohya_files import write_lora
from tests.support.tiny_unet import LORA_LAYERS

CFG = 6.0
STEPS = 4
PROMPTS = ["a cat AND a red hat :0.5", "a [dog:fox:2]"]  # an AND prompt and a prompt edited at step 2
LONG_PROMPTS = ["a cat sitting on a mat AND a red hat :0.5", "a [dog:fox:2]"]  # the cond takes two chunks
NEGATIVES = ["blurry", "ugly"]
TE_LAYERS = ["cond_stage_model.layers.0", "cond_stage_model.layers.2"]
HOST_MODULES = ("lib_autolora.hosts.a1111_api", "lib_autolora.hosts.a1111.adapter")  # import the fake WebUI
Run = collections.namedtuple("Run", "samples p generation denoisers")


def _drop_host_modules():
    for name in HOST_MODULES:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], child):
            delattr(sys.modules[parent], child)


@pytest.fixture
def a1111(monkeypatch, tmp_path, request):
    """The fake WebUI with the adapter imported against it and the script's callback registered; a
    kohya LoRA on the text encoder and UNet as `a1111.style`. Afterwards the adapter is dropped again.
    Parametrized indirectly with a dtype, the Lora extension keeps its backups in it (see LoraHost)."""
    fake = fake_a1111.install(monkeypatch, getattr(request, "param", None))
    _drop_host_modules()
    adapter = importlib.import_module("lib_autolora.hosts.a1111.adapter")
    fake.begin = functools.partial(_begin, fake.shared.opts, adapter.A1111Generation)
    fake_a1111.script_callbacks.on_cfg_denoiser(lifecycle.on_cfg_denoiser)  # as scripts/autolora.py does
    layers = TE_LAYERS + ["model.diffusion_model." + name for name in LORA_LAYERS]
    fake.style = load_kohya(write_lora(tmp_path / "style.safetensors", fake.sd_model, layers), "style")
    yield fake
    _drop_host_modules()
    assert not fake.callback_errors, "the cfg_denoiser callback raised (the WebUI would only log it)"


def _begin(opts, generation_class, p, args):
    lifecycle.begin(p, args, opts, generation_class)


def generate(a1111, args=None, prompts=PROMPTS, networks=True, batches=1, hires=False, on_decode=None):
    """A txt2img generation the way the WebUI runs it; AutoLoRA's script hooks only with `args`.
    Returns the samples of all batches, `p`, the AutoLoRA generation as postprocess found it and
    each batch's CFG denoiser. `on_decode(p, samples)` runs wherever the WebUI VAE-decodes."""
    loaded = [a1111.style] if networks else []
    p = a1111.processing.StableDiffusionProcessing(prompts, NEGATIVES, steps=STEPS, cfg_scale=CFG,
                                                   extra_network_data=tuple(n.name for n in loaded), enable_hr=hires)
    p.before_every_sampling.append(lifecycle.prepare_pass)  # process_before_every_sampling
    if on_decode is not None:
        p.on_decode.append(on_decode)
    if args is not None:
        a1111.begin(p, args)  # process
    samples, denoisers = [], []
    for _ in range(batches):
        a1111.networks.loaded_networks[:] = loaded  # extra_networks.activate
        with torch.no_grad():
            p.setup_conds()
            samples.append(p.sample(p.c, p.uc))
            lifecycle.end_sampling(p)  # post_sample
            p.decode(samples[-1])
        denoisers.append(p.sampler.model_wrap_cfg)
    generation = getattr(p, lifecycle.ATTRIBUTE, None)
    lifecycle.finish(p)  # postprocess
    return Run(torch.cat(samples), p, generation, denoisers)


def model_state(a1111):
    """Weights, the Lora extension's per-layer bookkeeping and its list of loaded networks."""
    weights = {k: v.clone() for k, v in a1111.sd_model.state_dict().items()}
    names = {n: layer.__dict__.get("network_current_names") for n, layer in a1111.lora.layers.items()}
    return weights, names, list(a1111.networks.loaded_networks)


def assert_same_state(state, a1111):
    weights, names, loaded = model_state(a1111)
    assert weights.keys() == state[0].keys() and all(torch.equal(state[0][k], v) for k, v in weights.items())
    assert names == state[1]
    assert loaded == state[2]


def unet_calls_without_networks(a1111):
    """Counts UNet evaluations made while the prompt's networks are switched off."""
    calls = []
    a1111.sd_model.model.diffusion_model.register_forward_pre_hook(
        lambda module, args: None if a1111.networks.loaded_networks else calls.append(len(args[0])))
    return calls


CASES = {  # option values of the WebUI, prompts
    "batched": ({}, PROMPTS),
    "unbatched": ({"batch_cond_uncond": False}, PROMPTS),
    "skipped uncond": ({"skip_early_cond": 0.5}, PROMPTS),
    "skipped uncond, unbatched": ({"skip_early_cond": 0.5, "batch_cond_uncond": False}, PROMPTS),
    "longer cond": ({}, LONG_PROMPTS),
    "longer cond, unbatched": ({"batch_cond_uncond": False}, LONG_PROMPTS),
    "longer cond, skipped uncond": ({"skip_early_cond": 0.5, "batch_cond_uncond": False}, LONG_PROMPTS),
    "longer cond, padded": ({"pad_cond_uncond": True}, LONG_PROMPTS),
    "longer cond, padded v0, unbatched": ({"pad_cond_uncond_v0": True, "batch_cond_uncond": False}, LONG_PROMPTS),
}
EXACT_CASES = ["batched", "skipped uncond, unbatched", "longer cond, padded"]


def use_case(a1111, case):
    """Sets the case's WebUI options; returns its prompts."""
    options, prompts = CASES[case]
    a1111.shared.opts.__dict__.update(options)
    return prompts


@pytest.mark.parametrize("case", EXACT_CASES)
def test_gamma_one_with_w2_equal_cfg_is_plain_lora_generation(a1111, case):
    prompts = use_case(a1111, case)
    plain = generate(a1111, prompts=prompts)
    base_calls = unet_calls_without_networks(a1111)
    run = generate(a1111, [{"gamma": 1.0, "lora_cfg": CFG}], prompts)
    assert torch.equal(run.samples, plain.samples)
    assert base_calls == [], "gamma 1 must not run the model without the networks"
    assert run.generation.report.calls[Passes.LORA] == STEPS


def test_gamma_one_installs_nothing(a1111):
    run = generate(a1111, [{"gamma": 1.0}])
    assert run.generation.switch is None and len(run.generation.recorder) == 0
    assert "combine_denoised" not in run.denoisers[0].__dict__


@pytest.mark.parametrize("case, memory", [(case, "auto") for case in EXACT_CASES] + [("batched", "lean"),
                                                                                  ("batched", "fast")])
def test_gamma_zero_with_w1_equal_cfg_is_the_model_without_the_lora(a1111, case, memory):
    prompts = use_case(a1111, case)
    without = generate(a1111, prompts=prompts, networks=False)
    lora = generate(a1111, prompts=prompts)
    assert not torch.equal(lora.p.uc[0][0].cond, without.p.uc[0][0].cond), "the LoRA must change the text encoding"
    assert not torch.allclose(lora.samples, without.samples, atol=1e-2)
    run = generate(a1111, [{"gamma": 0.0, "base_cfg": CFG, "memory": memory}], prompts)
    assert torch.equal(run.samples, without.samples)
    assert run.generation.report.calls[Passes.BASE] == STEPS


@pytest.mark.parametrize("memory", ["auto", "lean"])
@pytest.mark.parametrize("case", CASES)
def test_the_base_evaluation_next_to_the_lora_pass_batches_like_the_host(a1111, case, memory):
    """gamma 0 runs the host's own pass on the base model; a gamma next to 0 runs the LoRA pass, the
    adapter's own base evaluation and the blend. Both must agree with every way the host batches."""
    prompts = use_case(a1111, case)
    base_only = generate(a1111, [{"gamma": 0.0, "base_cfg": CFG}], prompts)
    blended = generate(a1111, [{"gamma": 1e-9, "base_cfg": CFG, "memory": memory}], prompts)
    assert blended.generation.report.calls[Passes.BOTH] == STEPS
    assert blended.generation.switch.layers.path == ("fast" if memory == "auto" else "lean")  # CPU: copies are free
    torch.testing.assert_close(blended.samples, base_only.samples, rtol=0, atol=1e-4)


@pytest.mark.parametrize("memory", ["auto", "lean", "fast"])
def test_finish_undoes_the_patches_and_leaves_the_model_as_a_plain_run_does(a1111, memory):
    plain = generate(a1111, batches=2)
    state = model_state(a1111)
    run = generate(a1111, [{"gamma": 1.5, "memory": memory}], batches=2)
    assert run.generation.report.calls[Passes.BOTH] == 2 * STEPS and run.generation.switch.switches > 2 * STEPS
    for denoiser in run.denoisers:  # a sampler per batch, each patched
        assert "combine_denoised" not in denoiser.__dict__
        assert "forward" not in denoiser.inner_model.__dict__
    assert run.p.__dict__.keys() == plain.p.__dict__.keys()
    assert run.p.c is plain.p.c and run.p.uc is plain.p.uc, "the host's conds (one shared cache) must be back"
    assert run.p.cached_c is plain.p.cached_c and run.p.cached_uc is plain.p.cached_uc
    assert_same_state(state, a1111)
    assert torch.equal(generate(a1111, batches=2).samples, plain.samples)


class Interrupted(Exception):
    """Stands for the WebUI's interrupt: sampling stops, the WebUI goes on to postprocess."""


def fail_in_the_third_base_evaluation(a1111, error):
    base_calls = []

    def hook(module, args):
        if not a1111.networks.loaded_networks:
            base_calls.append(1)
            if len(base_calls) == 3:
                raise error
    return a1111.sd_model.model.diffusion_model.register_forward_pre_hook(hook)


@pytest.mark.parametrize("memory", ["auto", "lean", "fast"])
def test_an_error_while_the_networks_are_off_leaves_the_next_run_as_a_fresh_one(a1111, memory):
    plain = generate(a1111)
    state = model_state(a1111)
    hook = fail_in_the_third_base_evaluation(a1111, RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        generate(a1111, [{"gamma": 1.5, "memory": memory}])  # the WebUI skips postprocess then
    hook.remove()
    assert_same_state(state, a1111)
    assert torch.equal(generate(a1111).samples, plain.samples)


@pytest.mark.parametrize("memory", ["auto", "lean", "fast"])
def test_an_interrupt_mid_step_then_postprocess_leaves_the_model_as_it_was(a1111, memory):
    plain = generate(a1111)
    state = model_state(a1111)
    p = a1111.processing.StableDiffusionProcessing(PROMPTS, NEGATIVES, steps=STEPS, cfg_scale=CFG,
                                                   extra_network_data=(a1111.style.name,))
    p.before_every_sampling.append(lifecycle.prepare_pass)
    a1111.begin(p, [{"gamma": 1.5, "memory": memory}])
    a1111.networks.loaded_networks[:] = [a1111.style]
    hook = fail_in_the_third_base_evaluation(a1111, Interrupted())
    with pytest.raises(Interrupted), torch.no_grad():
        p.setup_conds()
        p.sample(p.c, p.uc)
    hook.remove()
    lifecycle.finish(p)
    assert_same_state(state, a1111)
    assert torch.equal(generate(a1111).samples, plain.samples)


@pytest.mark.parametrize("memory", ["auto", "lean", "fast"])
def test_batched_evaluation_equals_two_calls_and_runs_one_model_call_per_step(a1111, memory, capsys):
    two_calls = generate(a1111, [{"gamma": 1.5, "memory": memory}])
    calls = []
    a1111.sd_model.model.diffusion_model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    batched = generate(a1111, [{"gamma": 1.5, "memory": memory, "batched": True}])
    rows = 3 + len(NEGATIVES)  # the AND prompt's two cond rows, the other's one, the uncond rows
    assert calls == [rows, rows] + [2 * rows] * (STEPS - 1), "the first step merges the networks, then one call"
    torch.testing.assert_close(batched.samples, two_calls.samples, rtol=1e-4, atol=1e-4)
    assert batched.generation.switch.layers.path == ("fast" if memory == "fast" else "lean")
    assert batched.generation.report.batched_calls == STEPS - 1
    assert "batched evaluation does not apply" not in capsys.readouterr().out


@pytest.mark.parametrize("case", ["unbatched", "skipped uncond"])
def test_batched_evaluation_falls_back_to_two_calls_and_says_so_once(a1111, case, capsys):
    prompts = use_case(a1111, case)
    two_calls = generate(a1111, [{"gamma": 1.5}], prompts)
    batched = generate(a1111, [{"gamma": 1.5, "batched": True}], prompts)
    torch.testing.assert_close(batched.samples, two_calls.samples, rtol=1e-4, atol=1e-4)
    out = capsys.readouterr().out
    assert out.count("batched evaluation does not apply here (the WebUI splits or skips the cond/uncond rows") == 1


@pytest.mark.parametrize("args, name", [([True, 20.0], "gamma"), ([{"w1": "strong"}], "base_cfg"),
                                        ([{"start": 0.6, "end": 0.4}], "start")])
def test_bad_arguments_fail_the_generation_naming_the_parameter(a1111, args, name):
    with pytest.raises(AutoLoraParamError, match=f"AutoLoRA: {name} must"):
        generate(a1111, args)


@pytest.mark.parametrize("args", [[False, 20.0], AutoLoraParams().to_args()])
def test_disabled_arguments_leave_p_untouched(a1111, args):
    p = a1111.processing.StableDiffusionProcessing(PROMPTS, NEGATIVES)
    before, extra = dict(p.__dict__), dict(p.extra_generation_params)
    a1111.begin(p, args)
    assert p.__dict__ == before and p.extra_generation_params == extra
    assert torch.equal(generate(a1111, args).samples, generate(a1111).samples)


@pytest.mark.parametrize("args", [[{"gamma": 2.0}], [{"gamma": -1}]])
def test_switched_off_server_generates_as_usual_and_says_so(a1111, args, capsys):
    p = a1111.processing.StableDiffusionProcessing(PROMPTS, NEGATIVES)
    before, extra = dict(p.__dict__), dict(p.extra_generation_params)
    lifecycle.begin(p, args, a1111.shared.opts, object, switched_off=True)  # no Generation may be made
    assert p.__dict__ == before and p.extra_generation_params == extra
    assert "the server runs with --autolora-off" in capsys.readouterr().out
    lifecycle.begin(p, [False], a1111.shared.opts, object, switched_off=True)
    assert capsys.readouterr().out == ""


def test_base_conds_skip_a_list_cache_keyed_without_the_networks(a1111, monkeypatch):
    """ersatzForge caches conds per processing object in `p.cond_cache`, keyed without the networks'
    state: the base conds must be encoded afresh, and the host's cache left as it was."""
    processing = sys.modules["modules.processing"]
    common = importlib.import_module("lib_autolora.hosts.a1111_api")
    host_setup = processing.StableDiffusionProcessing.setup_conds

    def list_cached_setup(p):
        for key, conds in getattr(p, "cond_cache", []):
            if key == tuple(p.prompts):
                p.c, p.uc = conds
                return
        host_setup(p)

    monkeypatch.setattr(processing.StableDiffusionProcessing, "setup_conds", list_cached_setup)
    p = processing.StableDiffusionProcessing(PROMPTS, NEGATIVES)
    stale = (object(), object())
    p.cond_cache = [[tuple(PROMPTS), stale]]
    generation = common.A1111ApiGeneration(p, AutoLoraParams(True), a1111.shared.opts)
    c, uc = generation.encode_base_conds(p, contextlib.nullcontext)
    assert c is not stale[0] and uc is not stale[1] and uc is not None
    assert p.cond_cache == [[tuple(PROMPTS), stale]]


@pytest.mark.parametrize("a1111", [torch.float64], indirect=True)  # copies and factors cost memory
@pytest.mark.parametrize("hires, batches", [(False, 1), (True, 1), (False, 2)], ids=["txt2img", "hires", "count 2"])
@pytest.mark.parametrize("memory", ["auto", "lean", "fast"])
def test_nothing_is_held_past_sampling_and_the_console_gives_the_most_held(a1111, memory, hires, batches, capsys):
    """What the switch holds on the device is made again in every sampling pass and gone before each decode."""
    while_sampling, at_decode = collections.defaultdict(list), []

    def held(p):
        generation = getattr(p, lifecycle.ATTRIBUTE)
        return generation.switch.held_bytes() if generation.switch is not None else 0

    def record(params):  # at each denoiser call: what the calls before it made
        while_sampling[params.denoiser.p.is_hr_pass].append(held(params.denoiser.p))

    fake_a1111.script_callbacks.on_cfg_denoiser(record)
    run = generate(a1111, [{"gamma": 1.5, "memory": memory}], batches=batches, hires=hires,
                   on_decode=lambda p, samples: at_decode.append(held(p)))
    assert at_decode == [0] * (batches * (2 if hires else 1))
    passes = [False, True] if hires else [False]
    assert sorted(while_sampling) == passes and all(max(while_sampling[hr]) > 0 for hr in passes)
    assert run.generation.switch.held_bytes() == 0
    most = max(max(values) for values in while_sampling.values())
    assert f"at most {most / 2**20:.1f} MiB held" in capsys.readouterr().out
    assert run.generation.switch.layers.path == ("fast" if memory == "fast" else "lean"), "the CPU gives no budget"


@pytest.mark.parametrize("lowvram, memory, path", [(True, "auto", "lean"), (True, "fast", "fast"),
                                                   (False, "auto", "fast")])
def test_auto_takes_the_lean_path_in_a1111s_low_vram_modes(a1111, lowvram, memory, path):
    """--medvram/--lowvram set `lowvram` on the model; copies on the device would defeat them."""
    a1111.sd_model.lowvram = lowvram
    run = generate(a1111, [{"gamma": 1.5, "memory": memory}])
    assert run.generation.switch.layers.path == path


def test_another_extensions_copies_of_p_leave_the_generation_guiding_and_reporting_once(a1111, capsys):
    """ADetailer, after each batch's decode, runs every script's postprocess on a copy of `p` and then
    before_process/process on another copy; the copies share the reference to the Generation."""
    args = [{"gamma": 1.5}]
    alone = generate(a1111, args, batches=3)
    lines = capsys.readouterr().out.count("AutoLoRA:")

    def adetailer_like(p, samples):
        lifecycle.finish(copy.copy(p))  # p.scripts.postprocess(copy(p), dummy)
        a1111.begin(copy.copy(p), args)  # p.scripts.before_process(copy_p); p.scripts.process(copy_p)

    run = generate(a1111, args, batches=3, on_decode=adetailer_like)
    assert torch.equal(run.samples, alone.samples)
    assert run.generation.report.calls == alone.generation.report.calls
    assert lines == 1 and capsys.readouterr().out.count("AutoLoRA:") == 1


@pytest.mark.parametrize("change", ["stop", "weight"])
def test_a_network_weight_changed_mid_sampling_is_followed_by_the_lean_path(a1111, change):
    """LoRA Block Weight's `stop=` sets a network's multipliers to 0 from a step on (in a cfg_denoiser
    callback, before the step's model calls); the host merges the new weights at the next forward. The
    base pass is the model without the networks whatever their weight, so lean must equal fast."""
    def change_weights(params):
        if params.sampling_step == 2:
            a1111.style.te_multiplier = a1111.style.unet_multiplier = 0.0 if change == "stop" else 0.4

    def run(memory):
        a1111.style.te_multiplier = a1111.style.unet_multiplier = 1.0
        return generate(a1111, [{"gamma": 1.5, "memory": memory}])

    fake_a1111.script_callbacks.on_cfg_denoiser(change_weights)
    runs = {memory: run(memory) for memory in ("lean", "fast")}
    assert runs["lean"].generation.switch.layers.path == "lean"
    torch.testing.assert_close(runs["lean"].samples, runs["fast"].samples, rtol=1e-4, atol=1e-4)


def test_a_weight_change_mid_sampling_keeps_the_copies_and_remakes_the_terms(a1111):
    """Copies do not depend on a network's weight: a change (every region of Regional Prompter's latent
    mode) must not make them again."""
    def change_weights(params):
        a1111.style.te_multiplier = a1111.style.unet_multiplier = 1.0 - 0.1 * params.sampling_step

    made = []
    fake_a1111.script_callbacks.on_cfg_denoiser(change_weights)
    with pytest.MonkeyPatch.context() as patch:
        original = layer_off.OffLayer.originals
        patch.setattr(layer_off.OffLayer, "originals", lambda off, keep: made.append(off.layer) or original(off, keep))
        run = generate(a1111, [{"gamma": 1.5, "memory": "fast"}])
    assert run.generation.switch.layers.path == "fast"
    assert len(made) == len(set(made)), "a layer's copy was made more than once in a sampling pass"
