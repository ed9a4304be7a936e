"""A stand-in for reForge's ldm_patched backend (branch main, commit 3b56b268) as the reForge family adapter
meets it, around the WebUI frame of `fake_patcher_webui`, for tier-2 tests of
`lib_autolora.hosts.reforge.adapter`. Written from ldm_patched/modules/model_patcher.py,
model_management.py and samplers.py, modules_forge/forge_sampler.py and unet_patcher.py, and
modules/sd_samplers_cfg_denoiser.py:

- `ModelPatcher`: `patches` {key: [(strength, value, model strength, offset, function)]} with a
  `patches_uuid` that `add_patches` renews, `model_options` deep-copied by `clone`, one `backup` dict
  (key -> (weight, inplace_update)) shared by a patcher and all its clones;
- loading (`partially_load`, through `model_management.load_models_gpu`): a model whose merged weights
  are another uuid's is unpatched first (the backups put back and the backup emptied); each patched
  weight is backed up and merged, as a new Parameter or, with `weight_inplace_update`, copied into the
  model's own Parameter; modules named in `low_vram_layers` stay unmerged with a `LowVramPatch` in their
  `weight_function` list, applied at each forward (the model is then `model_lowvram`);
- `load_models_gpu` unloads the patcher's clones without unpatching their weights and loads it;
  `current_loaded_models` holds its patchers weakly, an entry whose patcher is gone holding its parent;
- `calc_cond_batch` (conds batched as the free memory allows, in the host's order, through the model
  function wrapper), `calc_cond_uncond_batch`, `cfg_function` (post-CFG arguments with `cond_scale`),
  `sampling_function` (the CFG-1 optimization, `sampler_calc_cond_batch_function`, pre-CFG functions);
- the CFG denoiser from the cfg_denoiser callback on: the hires CFG in the hires pass, the uncond
  skipped (uncond None, scale 1) where "skip early CFG" or NGMS says, the conds converted, the
  conditioning modifiers run, then sampling_function.

Simplified away: Forge Classic's early-2024 samplers module (calc_cond_uncond_batch only, no cond_scale
in the post-CFG arguments) and per-clone backups, ComfyUI's hooks, wrappers and callbacks, object
patches, LoRA types other than plain LoRA, stochastic rounding (float32 weights), the InstructPix2Pix
and mask paths, dynamic clip skip, padding of conds of different lengths, ControlNet, memory estimates
(`low_vram_layers` chooses what stays unmerged). `backup_dtype` keeps backups in another dtype, standing
in for a backup on another device (so AutoLoRA's copies of the originals cost memory), as in fake_forge.
"""
import collections
import copy
import math
import types
import uuid
import weakref

import torch
import torch.nn.functional as F

from tests.support import fake_patcher_webui as webui

CPU = torch.device("cpu")
Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])
management = None  # the ldm_patched.modules.model_management of the test under way, set by install()


# -- ldm_patched.modules.model_patcher --

class LowVramPatch:
    def __init__(self, key, patches):
        self.key, self.patches = key, patches

    def __call__(self, weight):
        return webui.merge_lora(self.patches[self.key], weight)


def _cast_forward(module):
    """A Linear's forward as ldm_patched's cast operations run it: weight and bias through their functions."""
    def forward(x):
        weight, bias = module.weight, module.bias
        for function in module.__dict__.get("weight_function", []):
            weight = function(weight)
        for function in module.__dict__.get("bias_function", []):
            bias = function(bias)
        return F.linear(x, weight, bias)
    return forward


class ModelPatcher:
    backup_dtype = None  # set by install()

    def __init__(self, model, load_device=CPU, offload_device=CPU, size=0, weight_inplace_update=False):
        self.size, self.model = size, model
        self.patches, self.backup = {}, {}
        self.object_patches, self.object_patches_backup = {}, {}
        self.model_options = {"transformer_options": {}}
        self.load_device, self.offload_device = load_device, offload_device
        self.weight_inplace_update = weight_inplace_update
        self.patches_uuid, self.parent = uuid.uuid4(), None
        for name, default in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                              ("model_lowvram", False), ("current_weight_patches_uuid", None)):
            if not hasattr(model, name):
                setattr(model, name, default)

    def clone(self):
        n = type(self)(self.model, self.load_device, self.offload_device, self.size,
                       weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.backup, n.object_patches_backup, n.parent = self.backup, self.object_patches_backup, self
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        model_keys = set(self.model.state_dict())
        for key, value in patches.items():
            if key in model_keys:
                self.patches.setdefault(key, []).append((strength_patch, value, strength_model, None, None))
        self.patches_uuid = uuid.uuid4()
        return [key for key in patches if key in model_keys]

    def memory_required(self, input_shape):
        return self.model.memory_required(input_shape)

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        if key not in self.patches:
            return
        weight = self.model.get_parameter(key)
        inplace_update = self.weight_inplace_update or inplace_update
        if key not in self.backup:
            self.backup[key] = Backup(weight.to(device=self.offload_device, dtype=self.backup_dtype or weight.dtype,
                                                copy=inplace_update), inplace_update)
        out_weight = webui.merge_lora(self.patches[key], weight)
        if inplace_update:
            weight.data.copy_(out_weight)
        else:
            self._set_param(key, out_weight)

    def _set_param(self, key, value):
        path, _, name = key.rpartition(".")
        setattr(self.model.get_submodule(path), name, torch.nn.Parameter(value, requires_grad=False))

    def load(self, device_to=None):
        low_vram = management.low_vram_layers
        for path, module in self.model.named_modules():
            names = [name for name, _ in module.named_parameters(recurse=False)]
            if path in low_vram:
                if "weight_function" not in module.__dict__:
                    module.forward = _cast_forward(module)
                    module.weight_function, module.bias_function = [], []
                for name in names:
                    key = f"{path}.{name}"
                    if key in self.patches and not module.__dict__[f"{name}_function"]:
                        module.__dict__[f"{name}_function"] = [LowVramPatch(key, self.patches)]
                        self.model.lowvram_patch_counter += 1
                continue
            if getattr(module, "ldm_patched_patched_weights", False):
                continue
            for name in names:
                self.patch_weight_to_device(f"{path}.{name}" if path else name, device_to=device_to)
            module.ldm_patched_patched_weights = True
        self.model.model_lowvram = any(path in low_vram for path, _ in self.model.named_modules())
        self.model.current_weight_patches_uuid = self.patches_uuid
        self.model.model_loaded_weight_memory = sum(t.numel() * t.element_size() for t in self.model.parameters())

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if not unpatch_weights:
            return
        if self.model.model_lowvram:
            for module in self.model.modules():
                if "weight_function" in module.__dict__:
                    module.weight_function, module.bias_function = [], []
            self.model.model_lowvram, self.model.lowvram_patch_counter = False, 0
        for key, entry in list(self.backup.items()):
            if entry.inplace_update:
                self.model.get_parameter(key).data.copy_(entry.weight)
            else:
                self._set_param(key, entry.weight)
        if self.backup_dtype is not None:  # the stand-in's "offload device": back on the load device
            self.model.to(torch.float32)
        self.model.current_weight_patches_uuid = None
        self.backup.clear()
        self.model.model_loaded_weight_memory = 0
        for module in self.model.modules():
            module.__dict__.pop("ldm_patched_patched_weights", None)

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        current = self.model.current_weight_patches_uuid
        self.unpatch_model(self.offload_device, unpatch_weights=current is not None and current != self.patches_uuid)
        if not self.model.model_lowvram and self.model.model_loaded_weight_memory > 0:
            return 0
        self.load(device_to)
        return 0

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=True)
        return self.model


class UnetPatcher(webui.UnetExtras, ModelPatcher):
    pass


# -- ldm_patched.modules.model_management --

class LoadedModel:
    """Holds its patcher weakly; once the patcher is gone, its parent (ComfyUI's `_switch_parent`)."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self._parent = weakref.ref(model.parent) if model.parent is not None else None
        self.device, self.currently_used = model.load_device, True

    @property
    def model(self):
        model = self._model()
        if model is None and self._parent is not None:
            self._model, self._parent = self._parent, None
            model = self._model()
        return model

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        self.model.partially_load(self.device, 1e32, force_patch_weights=force_patch_weights)

    def __eq__(self, other):
        return self.model is other.model


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    loaded = management.current_loaded_models
    loaded[:] = [entry for entry in loaded if entry.model is not None]  # cleanup_models_gc
    to_load = []
    for model in dict.fromkeys(models):
        entry = LoadedModel(model)
        to_load.append(loaded[loaded.index(entry)] if entry in loaded else entry)
    for entry in to_load:
        for i in reversed(range(len(loaded))):
            if entry.model.is_clone(loaded[i].model):
                loaded.pop(i).model.detach(unpatch_all=False)
    for entry in to_load:
        entry.model_load(force_patch_weights=force_patch_weights)
        loaded.insert(0, entry)


def _management_module():
    return webui._module(
        "ldm_patched.modules.model_management", VRAMState=webui.VRAMState, vram_state=webui.VRAMState.NORMAL_VRAM,
        current_loaded_models=[], free_memory=2**40, low_vram_layers=(),
        get_free_memory=lambda dev=None, torch_free_too=False: management.free_memory,
        load_models_gpu=load_models_gpu, load_model_gpu=lambda model: load_models_gpu([model]))


# -- ldm_patched.modules.samplers --

def calc_cond_batch(model, conds, x_in, timestep, model_options):
    outputs = {i: (torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37) for i in range(len(conds))}
    to_run = [(webui.get_area_and_mult(x, x_in, timestep), i) for i, cond in enumerate(conds) if cond is not None
              for x in cond]
    free_memory = management.get_free_memory(x_in.device)
    webui.batched_model_calls(model, to_run, x_in, timestep, model_options,
                              lambda shape: model.memory_required(shape) * 1.5 < free_memory, outputs)
    return [total / count for total, count in outputs.values()]


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    return tuple(calc_cond_batch(model, [cond, uncond], x_in, timestep, model_options))


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None,  # noqa: B006
                 uncond=None):
    edit_strength = sum(item.get("strength", 1) for item in cond)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred if uncond_pred is not None else None,
                "cond_scale": cond_scale, "timestep": timestep, "input": x, "sigma": timestep,
                "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model,
                "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif uncond_pred is None:
        cfg_result = cond_pred
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        cfg_result = fn({"denoised": cfg_result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale,
                         "model": model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                         "sigma": timestep, "model_options": model_options, "input": x})
    return cfg_result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):  # noqa: B006
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond
    conds = [cond, uncond_]
    if "sampler_calc_cond_batch_function" in model_options:
        out = model_options["sampler_calc_cond_batch_function"]({"conds": conds, "input": x, "sigma": timestep,
                                                                 "model": model, "model_options": model_options})
    else:
        out = calc_cond_batch(model, conds, x, timestep, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)
        x = args["input"]
    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond,
                        uncond=uncond_)


# -- modules_forge.forge_sampler --

def sampling_prepare(unet, x):
    management.load_models_gpu(models=[unet] + unet.extra_model_patchers_during_sampling,
                               memory_required=unet.memory_required([x.shape[0] * 2] + list(x.shape[1:])))


def sampling_cleanup(unet):
    pass  # ControlNet: none in the stand-in


# -- modules.sd_samplers_cfg_denoiser: CFGDenoiser.forward from the cfg_denoiser callback on --

def denoise(denoiser, params, cond_scale, cond_composition, s_min_uncond):
    p, opts = denoiser.p, webui.shared.opts
    skip_uncond = False
    if p.is_hr_pass:
        cond_scale = p.hr_cfg
    s_min_uncond = getattr(opts, "s_min_uncond", 0.0)
    if s_min_uncond > 0 and params.sigma[0] < s_min_uncond and (denoiser.step % 2 == 0 or opts.s_min_uncond_all):
        skip_uncond = True
    if not skip_uncond:
        if denoiser.step < opts.skip_early_cond:
            skip_uncond = True
        elif opts.skip_early_cond != 0. and denoiser.step / denoiser.total_steps <= opts.skip_early_cond:
            skip_uncond = True
    unet = webui.shared.sd_model.forge_objects.unet
    model, model_options, seed = unet.model, unet.model_options, p.seeds[0]
    x, sigma = params.x, params.sigma
    uncond_patched = webui.compile_conditions(params.text_uncond)
    cond_patched = webui.compile_weighted_conditions(params.text_cond, cond_composition)
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, sigma, uncond_patched, cond_patched, cond_scale, model_options, seed = modifier(
            model, x, sigma, uncond_patched, cond_patched, cond_scale, model_options, seed)
    if skip_uncond:
        return sampling_function(model, x, sigma, None, cond_patched, 1.0, model_options, seed)
    return sampling_function(model, x, sigma, uncond_patched, cond_patched, cond_scale, model_options, seed)
    # combine_denoised then takes the batch's rows as they are


def install(monkeypatch, backup_dtype=None, inplace=False, low_vram_layers=()):
    """Fresh WebUI and backend modules in sys.modules; returns the world of `fake_patcher_webui.install`
    with `management` (model_management), `loaded_patchers()` (the patchers it holds), `patches_of(patcher)`
    and `backups()` (the UNet's backups by identity, its merged uuid, each layer's weight functions).
    `inplace`: the UNet patcher merges into its own Parameters; `low_vram_layers`: Linear layers of the
    UNet patcher's model (`diffusion_model.<layer>`) left unmerged."""
    global management
    management = _management_module()
    management.low_vram_layers = tuple(low_vram_layers)
    ModelPatcher.backup_dtype = backup_dtype
    conds = webui._module("ldm_patched.modules.conds", CONDRegular=webui.Condition,
                          CONDCrossAttn=webui.ConditionCrossAttn)
    modules = {
        "ldm_patched.modules.model_management": management,
        "ldm_patched.modules.model_patcher": webui._module(
            "ldm_patched.modules.model_patcher", ModelPatcher=ModelPatcher, LowVramPatch=LowVramPatch),
        "ldm_patched.modules.samplers": webui._module(
            "ldm_patched.modules.samplers", calc_cond_batch=calc_cond_batch,
            calc_cond_uncond_batch=calc_cond_uncond_batch, cfg_function=cfg_function,
            sampling_function=sampling_function),
        "ldm_patched.modules.conds": conds,
        "modules_forge.forge_sampler": webui._module(
            "modules_forge.forge_sampler", cond_from_a1111_to_patched_ldm=webui.compile_conditions,
            cond_from_a1111_to_patched_ldm_weighted=webui.compile_weighted_conditions,
            sampling_prepare=sampling_prepare, sampling_cleanup=sampling_cleanup),
        "modules_forge.unet_patcher": webui._module("modules_forge.unet_patcher", UnetPatcher=UnetPatcher),
    }
    backend = types.SimpleNamespace(
        add_patches=lambda patcher, filename, patches, strength: patcher.add_patches(patches, strength),
        load_model_gpu=lambda patcher: load_models_gpu([patcher]), sampling_prepare=sampling_prepare,
        sampling_cleanup=sampling_cleanup, denoise=denoise, prepares_hires_twice=False)
    world = webui.install(monkeypatch, backend, modules,
                          lambda model: UnetPatcher(model, weight_inplace_update=inplace), ModelPatcher)
    world.management = management
    world.loaded_patchers = lambda: [entry.model for entry in management.current_loaded_models
                                     if entry.model is not None]
    world.patches_of = lambda patcher: patcher.patches
    unet = world.sd_model.forge_objects_original.unet
    world.backups = lambda: ({key: (id(entry.weight), entry.inplace_update) for key, entry in unet.backup.items()},
                             unet.model.current_weight_patches_uuid,
                             {path: [*vars(module).get("weight_function", []), *vars(module).get("bias_function", [])]
                              for path, module in unet.model.named_modules()})
    return world
