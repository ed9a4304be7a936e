"""Names for the WebUI's objects that the package is handed and never imports. The WebUI is not
installed where the type checker runs, so to it they are Any; the names tell the reader what comes."""
from typing import Any

Processing = Any  # the WebUI's StableDiffusionProcessing, `p`
Options = Any  # the WebUI's options, shared.opts
Shared = Any  # the WebUI's modules.shared
Gradio = Any  # the gradio module
Component = Any  # a gradio component
Denoiser = Any  # the WebUI's CFGDenoiser
DenoiserParams = Any  # the CFGDenoiserParams its cfg_denoiser callback hands over
Sampler = Any  # the WebUI's sampler of a sampling pass
State = Any  # the WebUI's job state, shared.state
XyzGrid = Any  # the X/Y/Z plot script's module
Conds = Any  # the WebUI's conds: prompt schedules, their tensors, dicts and lists of them
Network = Any  # one of the prompt's loaded networks (its `name`)
SdModel = Any  # the WebUI's loaded checkpoint, p.sd_model
UnetPatcher = Any  # a ComfyUI-style UNet patcher (Forge's, ldm_patched's), sd_model.forge_objects.unet
MemoryManager = Any  # a patcher family's memory manager module (backend.memory_management, model_management)
