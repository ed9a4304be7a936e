"""The ldm_patched sampling function's evaluation of (cond, uncond), for the base model, and the CFG
scale the host hands to it. Host-free: the host's `ldm_patched.modules.samplers` module is handed in.

Two generations of that module are in use. ComfyUI's of late 2024 on (reForge) batches with
`calc_cond_batch(model, [cond, uncond], ...)`, which an extension may replace
(`sampler_calc_cond_batch_function`), and runs the `sampler_pre_cfg_function`s on the predictions.
Early 2024's (Forge Classic) has `calc_cond_uncond_batch` and runs its pre-CFG functions on the
inputs before evaluating: the host ran those for this call already, and the base pass takes the
input they left (the post-CFG arguments' `input`).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch


class RecordsScale(Protocol):
    def record_host_scale(self, scale: float) -> None: ...


def predictions(samplers: Any, model: Any, cond: Any, uncond: Any, x: torch.Tensor, sigma: torch.Tensor,
                options: dict[str, Any], cond_scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) predictions as the host's sampling_function makes them before its CFG."""
    if not hasattr(samplers, "calc_cond_batch"):
        return samplers.calc_cond_uncond_batch(model, cond, uncond, x, sigma, options)
    conds = [cond, uncond]
    calc = options.get("sampler_calc_cond_batch_function")
    if calc is None:
        out = samplers.calc_cond_batch(model, conds, x, sigma, options)
    else:
        out = calc({"conds": conds, "input": x, "sigma": sigma, "model": model, "model_options": options})
    for fn in options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": sigma, "input": x,
                  "sigma": sigma, "model": model, "model_options": options})
    return out[0], out[1]


def scale_recorder(generation: RecordsScale) -> Any:
    """A conditioning modifier (the hosts run them last before sampling_function, and hand them the
    scale it gets) that hands that scale to `generation.record_host_scale`. A plain function: the
    patchers deep-copy model options when they clone."""
    def record(model: Any, x: torch.Tensor, timestep: torch.Tensor, uncond: Any, cond: Any, cond_scale: float,
               model_options: dict[str, Any], seed: Any) -> tuple[Any, ...]:
        generation.record_host_scale(cond_scale)
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed
    return record
