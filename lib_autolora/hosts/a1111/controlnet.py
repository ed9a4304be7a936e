"""Mikubill's sd-webui-controlnet marks the conds A1111 hands to sampling: a row before each prompt's
tokens that its UNet hook strips again and reads to tell prompt rows from negative-prompt rows. The
base model's conds, encoded apart, need the same marks: without them the hook counts every row as a
prompt (its "ControlNet is more important" mode then controls the negative prompt too), and conds
with and without a mark differ in length by one token. Marking them goes through its own
`mark_prompt_context`, the call it documents for extensions that make conds of their own."""
from __future__ import annotations

import sys
from typing import Any

from lib_autolora.webui.host_objects import Conds


def _marking_module() -> Any:
    """ControlNet's hook module once the extension has loaded (it imports it as scripts.hook), else None."""
    module = sys.modules.get("scripts.hook")
    names = ("mark_prompt_context", "prompt_context_is_marked")
    return module if all(callable(getattr(module, name, None)) for name in names) else None


def _first_tensor(conds: Conds) -> Any:
    """The first cond tensor of A1111's multicond conds (c) or schedule lists (uc)."""
    first = conds.batch[0][0].schedules[0] if hasattr(conds, "batch") else conds[0][0]
    return first.cond["crossattn"] if isinstance(first.cond, dict) else first.cond


def mark_like_host(base_conds: tuple[Conds, Conds], host_conds: tuple[Conds, Conds]) -> tuple[Conds, Conds]:
    """The base (c, uc), marked where the host's (c, uc) carry ControlNet's marks."""
    hook = _marking_module()
    if hook is None:
        return base_conds

    def marked(base: Conds, host: Conds, positive: bool) -> Conds:
        if base is None or host is None or not hook.prompt_context_is_marked(_first_tensor(host)):
            return base
        return hook.mark_prompt_context(base, positive=positive)

    (c, uc), (host_c, host_uc) = base_conds, host_conds
    return marked(c, host_c, True), marked(uc, host_uc, False)
