"""What AutoLoRA did in one generation, for the console line the user reads."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lib_autolora.core.guidance import Passes

if TYPE_CHECKING:
    from lib_autolora.core.params import ParamsMethods


class RunReport:
    def __init__(self, params: ParamsMethods) -> None:
        self.params = params
        self.calls = {passes: 0 for passes in Passes}
        self.active_steps: dict[str, list[int]] = {}  # pass label ("steps", "hires pass") -> steps with AutoLoRA
        self.networks: list[str] = []
        self.not_applied: str | None = None  # why AutoLoRA stood aside, once known
        self.notes: set[str] = set()  # what the console said once
        self.batched_calls = 0  # denoiser calls whose base rows rode along in the LoRA pass's model call

    def record(self, passes: Passes, step: int, label: str) -> None:
        self.calls[passes] += 1
        if passes is not Passes.LORA:
            self.active_steps.setdefault(label, []).append(step)

    def note(self, message: str) -> bool:
        """Returns True the first time a message is noted, so the caller says it once."""
        if message in self.notes:
            return False
        self.notes.add(message)
        return True

    def record_not_applied(self, reason: str) -> bool:
        """Keeps the first reason AutoLoRA stood aside for; True the first time, so the caller can say it once."""
        if self.not_applied is not None:
            return False
        self.not_applied = reason
        return True

    def summary(self, switches: int = 0, switch_seconds: float = 0.0, held_bytes: int = 0, path: str = "",
                changed_bytes: int = 0) -> str | None:
        """The console line, or None when AutoLoRA stood aside (it said why when it did). `path` says how
        the base pass got the layers without LoRA, `held_bytes` the most the network switch held at once (it
        holds nothing once a sampling pass ends), `changed_bytes` the size of the layers the networks change."""
        params = self.params
        if self.not_applied:
            return None
        if not self.active_steps:
            if params.gamma == 1:
                return "AutoLoRA: gamma 1 is plain LoRA generation; no base pass was run."
            return (f"AutoLoRA: no denoiser call fell in the range {params.start:g}-{params.end:g}; "
                    "plain LoRA generation.")
        w1 = "CFG" if params.base_cfg is None else f"{params.base_cfg:g}"
        w2 = "CFG" if params.lora_cfg is None else f"{params.lora_cfg:g}"
        active = self.calls[Passes.BOTH] + self.calls[Passes.BASE]
        steps = ", ".join(f"{label} {min(s)}-{max(s)}" for label, s in self.active_steps.items())
        mode = "base model only" if params.gamma == 0 else "LoRA and base passes"
        batched = f", {self.batched_calls} of them as one model call" if self.batched_calls else ""
        held = f"at most {held_bytes / 2**20:.1f} MiB held"
        if changed_bytes:
            share = 100 * held_bytes / changed_bytes
            held += f" ({share:.0f} % of the {changed_bytes / 2**20:.1f} MiB of LoRA'd layers)"
        held += " while sampling, none after"
        calls = sum(self.calls.values())
        return (f"AutoLoRA: gamma {params.gamma:g}, w1 {w1}, w2 {w2}, {mode} on {active} of {calls} denoiser calls "
                f"({steps}){batched}, networks {', '.join(self.networks)}; {switches} network switches took "
                f"{switch_seconds * 1000:.0f} ms; {path or 'no layer switched'}, {held}.")
