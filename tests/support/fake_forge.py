"""A stand-in for Forge's backend (commit dfdcbab) as the Forge adapter meets it, around the WebUI frame
of `fake_patcher_webui`, for tier-2 tests of `lib_autolora.hosts.forge.adapter` (Forge and Forge Neo).
Written from backend/patcher/base.py, unet.py and lora.py, backend/memory_management.py,
backend/sampling/condition.py and sampling_function.py, and modules/sd_samplers_cfg_denoiser.py:

- `UnetPatcher`/`ModelPatcher`: `lora_patches` {(file, strength, model strength, online): {key:
  [[strength, value, model strength, offset, function]]}}, `model_options` deep-copied by `clone`, the
  model's one `LoraLoader` shared by every clone;
- `LoraLoader.refresh` (when the memory manager loads a patcher): nothing if the patches' hash is the
  one merged; else the backups are put back, then each patched weight is backed up (`backup`, on the
  offload device) and replaced by a new Parameter with the patches merged;
- `memory_management.load_models_gpu`: a patcher not loaded yet unloads its clones and is loaded
  (its LoRA refreshed); `current_loaded_models` keeps the last loaded patchers after the generation;
- `calc_cond_uncond_batch`, `sampling_function_inner`, `sampling_function` (conditioning modifiers,
  the CFG-1 optimization, `sampler_cfg_function`, post-CFG functions, the model function wrapper,
  cond/uncond rows batched as the free memory allows, in the host's order);
- the CFG denoiser's CFG scale: the hires CFG in the hires pass, 1 where "skip early CFG" or NGMS skip.

Simplified away: online LoRA (Forge uses it only for quantized storage), quantized and GGUF weights,
LoRA types other than plain LoRA, DoRA, object patches, ControlNet, the image conditioning and
`extra_concat_condition`, CPU swap (`model_accelerated` stays False). On the CPU the offload device is
the load device, so a backup is the very Parameter it replaced (as Forge on a CPU); `install`'s
`backup_dtype` keeps backups in another dtype instead, standing in for a backup on another device
(a GPU's weights backed up on the CPU), which is what makes AutoLoRA's copies cost memory.
"""
import copy
import math
import types

import torch

from tests.support import fake_patcher_webui as webui

CPU = torch.device("cpu")
memory = None  # the backend.memory_management of the test under way, set by install()


def get_attr_with_parent(obj, key):
    *path, name = key.split(".")
    for part in path:
        obj = getattr(obj, part)
    return obj, name, getattr(obj, name)


def set_attr_raw(obj, key, value):
    parent, name, _ = get_attr_with_parent(obj, key)
    setattr(parent, name, value)


# -- backend.patcher.lora --

class LoraLoader:
    def __init__(self, model, backup_dtype=None):
        self.model = model
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])
        self.backup_dtype = backup_dtype

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=CPU, force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        all_patches = {}
        for (_, _, _, online_mode), patches in lora_patches.items():
            assert not online_mode, "the stand-in has no online LoRA"
            for key, current_patches in patches.items():
                all_patches[key] = all_patches.get(key, []) + current_patches
        memory.signal_empty_cache = True
        parameter_devices = {key: (p.device, p.dtype) for key, p in self.model.named_parameters()}
        for key, weight in self.backup.items():  # restore
            set_attr_raw(self.model, key, weight if isinstance(weight, torch.nn.Parameter) else
                         torch.nn.Parameter(weight, requires_grad=False))
        self.backup = {}
        _set_parameter_devices(self.model, parameter_devices)
        for key, current_patches in all_patches.items():
            _, _, weight = get_attr_with_parent(self.model, key)
            assert isinstance(weight, torch.nn.Parameter), f"Wrong LoRA Key: {key}"
            if key not in self.backup:
                self.backup[key] = weight.to(device=offload_device, dtype=self.backup_dtype or weight.dtype)
            set_attr_raw(self.model, key, torch.nn.Parameter(webui.merge_lora(current_patches, weight),
                                                             requires_grad=False))
        _set_parameter_devices(self.model, parameter_devices)
        self.loaded_hash = hashes


def _set_parameter_devices(model, parameter_devices):
    """Parameters back where they were (the stand-in's backups may differ in dtype, standing in for the device)."""
    for key, (device, dtype) in parameter_devices.items():
        _, _, p = get_attr_with_parent(model, key)
        if p.device != device or p.dtype != dtype:
            set_attr_raw(model, key, torch.nn.Parameter(p.to(device=device, dtype=dtype), requires_grad=False))


# -- backend.patcher.base, backend.patcher.unet --

class ModelPatcher:
    backup_dtype = None  # the LoraLoader's, set by install()

    def __init__(self, model, load_device=CPU, offload_device=CPU, size=0, current_device=None):
        self.size, self.model = size, model
        self.lora_patches = {}
        self.object_patches, self.object_patches_backup = {}, {}
        self.model_options = {"transformer_options": {}}
        self.load_device, self.offload_device = load_device, offload_device
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model, self.backup_dtype)
        self.lora_loader = model.lora_loader
        self.current_device = offload_device if current_device is None else current_device

    def clone(self):
        n = type(self)(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        model_keys = {k for k, _ in self.model.named_parameters()}
        this_patches = {}
        for key, value in patches.items():
            if key in model_keys:
                this_patches.setdefault(key, []).append([strength_patch, value, strength_model, None, None])
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = this_patches
        return set(this_patches)

    def has_online_lora(self):
        return any(online for (_, _, _, online) in self.lora_patches)

    def refresh_loras(self):
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)

    def memory_required(self, input_shape):
        return self.model.memory_required(input_shape=input_shape)


class UnetPatcher(webui.UnetExtras, ModelPatcher):
    pass


# -- backend.memory_management --

class LoadedModel:
    def __init__(self, model):
        self.model, self.model_accelerated, self.device = model, False, model.load_device

    def model_load(self):
        self.model.refresh_loras()

    def model_unload(self, avoid_model_moving=False):
        pass  # object patches and devices: none in the stand-in

    def __eq__(self, other):
        return self.model is other.model


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    to_load = []
    for model in models:
        loaded = LoadedModel(model)
        if loaded in memory.current_loaded_models:
            index = memory.current_loaded_models.index(loaded)
            memory.current_loaded_models.insert(0, memory.current_loaded_models.pop(index))
        else:
            to_load.append(loaded)
    for loaded in to_load:  # unload_model_clones
        for i in reversed(range(len(memory.current_loaded_models))):
            if loaded.model.is_clone(memory.current_loaded_models[i].model):
                memory.current_loaded_models.pop(i).model_unload(avoid_model_moving=True)
    for loaded in to_load:
        loaded.model_load()
        memory.current_loaded_models.insert(0, loaded)


def _memory_module():
    return webui._module(
        "backend.memory_management", VRAMState=webui.VRAMState, vram_state=webui.VRAMState.NORMAL_VRAM,
        current_loaded_models=[], signal_empty_cache=False, free_memory=2**40,
        get_free_memory=lambda device=None, torch_free_too=False: memory.free_memory,
        soft_empty_cache=lambda force=False: setattr(memory, "signal_empty_cache", False),
        load_models_gpu=load_models_gpu, load_model_gpu=lambda model: load_models_gpu([model]))


# -- backend.sampling.sampling_function --

COND, UNCOND = 0, 1


def _cond_indices(cond_or_uncond, sigmas):
    rows = int(sigmas.shape[0])
    marks = [kind for kind in cond_or_uncond for _ in range(rows)]
    return {"cond_mark": torch.Tensor(marks).to(sigmas),
            "cond_indices": [i for i, kind in enumerate(marks) if kind == COND],
            "uncond_indices": [i for i, kind in enumerate(marks) if kind == UNCOND]}


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    outputs = {kind: (torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37) for kind in (COND, UNCOND)}
    to_run = [(webui.get_area_and_mult(x, x_in, timestep), COND) for x in cond]
    to_run += [(webui.get_area_and_mult(x, x_in, timestep), UNCOND) for x in uncond or []]
    if memory.signal_empty_cache:
        memory.soft_empty_cache()
    free_memory = memory.get_free_memory(x_in.device)
    webui.batched_model_calls(model, to_run, x_in, timestep, model_options,
                              lambda shape: model.memory_required(shape) < free_memory, outputs, _cond_indices)
    return tuple(total / count for total, count in (outputs[COND], outputs[UNCOND]))


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None,  # noqa: B006
                            return_full=False):
    edit_strength = sum(item.get("strength", 1) for item in cond)
    cfg1 = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    uncond_ = None if cfg1 else uncond
    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        cfg_result = fn({"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model,
                         "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                         "model_options": model_options, "input": x})
    return (cfg_result, cond_pred, uncond_pred) if return_full else cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = webui.shared.sd_model.forge_objects.unet  # self.inner_model.inner_model is shared.sd_model
    model = unet_patcher.model
    x, timestep = denoiser_params.x, denoiser_params.sigma
    uncond = webui.compile_conditions(denoiser_params.text_uncond)
    cond = webui.compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed,
                                   return_full=True)


def sampling_prepare(unet, x):
    memory.load_models_gpu(models=[unet] + unet.extra_model_patchers_during_sampling,
                           memory_required=unet.memory_required([x.shape[0] * 2] + list(x.shape[1:])))


def sampling_cleanup(unet):
    pass  # online LoRA and ControlNet: none in the stand-in


# -- modules.sd_samplers_cfg_denoiser: CFGDenoiser.forward from the cfg_denoiser callback on --

def denoise(denoiser, params, cond_scale, cond_composition, s_min_uncond):
    p, opts = denoiser.p, webui.shared.opts
    if p.is_hr_pass:
        cond_scale = p.hr_cfg
    if opts.skip_early_cond > 0 and denoiser.step / denoiser.total_steps <= opts.skip_early_cond:
        cond_scale = 1.0
    elif (denoiser.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and params.sigma[0] < s_min_uncond:
        cond_scale = 1.0
    denoised, _, _ = sampling_function(denoiser, params, cond_scale, cond_composition)
    return denoised


def install(monkeypatch, backup_dtype=None):
    """Fresh WebUI and backend modules in sys.modules; returns the world of `fake_patcher_webui.install`
    with `memory` (backend.memory_management), `loaded_patchers()` (the patchers the memory manager
    holds), `patches_of(patcher)` and `backups()` (the UNet loader's backups by identity, its hash)."""
    global memory
    memory = _memory_module()
    ModelPatcher.backup_dtype = backup_dtype
    modules = {
        "backend.memory_management": memory,
        "backend.sampling.condition": webui._module(
            "backend.sampling.condition", Condition=webui.Condition, ConditionCrossAttn=webui.ConditionCrossAttn,
            compile_conditions=webui.compile_conditions, compile_weighted_conditions=webui.compile_weighted_conditions),
        "backend.sampling.sampling_function": webui._module(
            "backend.sampling.sampling_function", calc_cond_uncond_batch=calc_cond_uncond_batch,
            sampling_function_inner=sampling_function_inner, sampling_function=sampling_function,
            sampling_prepare=sampling_prepare, sampling_cleanup=sampling_cleanup),
    }
    backend = types.SimpleNamespace(
        add_patches=lambda patcher, filename, patches, strength: patcher.add_patches(
            filename=filename, patches=patches, strength_patch=strength),
        load_model_gpu=lambda patcher: load_models_gpu([patcher]), sampling_prepare=sampling_prepare,
        sampling_cleanup=sampling_cleanup, denoise=denoise, prepares_hires_twice=True)
    world = webui.install(monkeypatch, backend, modules, UnetPatcher, ModelPatcher)
    world.memory = memory
    world.loaded_patchers = lambda: [loaded.model for loaded in memory.current_loaded_models]
    world.patches_of = lambda patcher: patcher.lora_patches
    unet = world.sd_model.forge_objects_original.unet.model
    world.backups = lambda: ({key: id(weight) for key, weight in unet.lora_loader.backup.items()},
                             unet.lora_loader.loaded_hash)
    return world
