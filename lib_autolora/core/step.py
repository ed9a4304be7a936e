"""One denoiser call as AutoLoRA runs it: decided once, when the call begins, by the shared layer
(`webui.generation.Generation.begin_call`) and read, never changed, by the host code that runs it."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lib_autolora.core.guidance import Passes
    from lib_autolora.core.params import ParamsMethods

StepConds = tuple[Any, Any, Any]  # the host's (conds_list, cond tensor, uncond tensor or None) at one step


@dataclasses.dataclass(frozen=True)
class Step:
    number: int  # the denoiser step
    passes: Passes  # which model evaluations the call needs
    params: ParamsMethods | None  # the settings of the sampling pass under way (None: AutoLoRA stood aside)
    base_conds: StepConds | None  # the base model's conds at this step; None where no base pass runs
    host_scale: float | None = None  # the CFG scale the host uses for the call, where the host code knows it

    def with_host_scale(self, scale: float) -> Step:
        """This step once the host has said its scale (ldm_patched hosts say it just before their CFG)."""
        return dataclasses.replace(self, host_scale=scale)
