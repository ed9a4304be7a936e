"""What every supported host keeps of A1111's module API: its processing object's cond setup, its
prompt schedules and its built-in Lora extension's list of loaded networks."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from lib_autolora.core.recorder import ABSENT, Recorder
from lib_autolora.core.step import StepConds
from lib_autolora.hosts.layers.layer_off import BatchLayoutError
from lib_autolora.webui.generation import Generation
from lib_autolora.webui.host_objects import Conds, Network, Processing

from modules import devices, processing, prompt_parser

COND_FIELDS = ("c", "uc", "hr_c", "hr_uc", "cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc")
# ersatzForge keeps one more cache per processing object, a list of [key, conds] whose key does not
# say whether the networks were on
LIST_CACHES = ("cond_cache",)


class A1111ApiGeneration(Generation):
    recoverable = (BatchLayoutError,)  # a batched call that cannot apply falls back to two calls

    def loaded_networks(self) -> list[Network]:
        import networks  # the host's built-in Lora extension, importable once it has loaded
        return networks.loaded_networks

    def encode_base_conds(self, p: Processing,
                          networks_off: Callable[[], AbstractContextManager[Any]]) -> tuple[Conds, Conds]:
        """Calls the host's own cond setup on fresh caches, so prompt editing schedules, hires prompts
        and step counts are exactly the host's; restores every field it touches."""
        recorder = Recorder()
        try:
            for name in COND_FIELDS[:4]:  # kept as they are, to be put back after the host's setup writes them
                recorder.set_attr(p, name, p.__dict__.get(name, ABSENT))
            for name in COND_FIELDS[4:]:
                recorder.set_attr(p, name, [None, None])
            for name in LIST_CACHES:
                recorder.set_attr(p, name, [])
            with networks_off(), devices.autocast():
                if getattr(p, "is_hr_pass", False):
                    p.hr_c = None
                    p.calculate_hr_conds()
                    return p.hr_c, p.hr_uc
                processing.StableDiffusionProcessing.setup_conds(p)
                return p.c, p.uc
        finally:
            recorder.undo()

    def conds_at_step(self, c: Conds, uc: Conds, step: int) -> StepConds:
        """As the host's denoiser rebuilds them at each step."""
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(c, step)
        return conds_list, tensor, None if uc is None else prompt_parser.reconstruct_cond_batch(uc, step)
