"""Test-only hooks for the live hardening tests, armed when the WebUI starts with the environment
variable AUTOLORA_TEST_FAULTS=1. Unarmed, each hook is one flag check and nothing is registered.

Armed, a request can name in its `override_settings`:

    autolora_test_fault   "setup": raise InjectedFault when a sampling pass has been set up;
                          "base@N" / "lora@N": raise it inside the base / LoRA pass of denoiser step N
    autolora_test_pace    seconds to sleep in each denoiser call AutoLoRA handles, so that a test can
                          interrupt or skip a generation at a step of its choice

and GET /autolora-test/state reports what a leak would grow: this extension's registered callbacks,
live Generation objects, host objects holding AutoLoRA's functions, tensors held by network switches,
all tensors alive, the process's resident memory, generations begun and AutoLoRA's last console lines.
"""
from __future__ import annotations

import collections
import functools
import gc
import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from lib_autolora.core.report import RunReport
from lib_autolora.webui.host_objects import Processing, Shared

ARMED = os.environ.get("AUTOLORA_TEST_FAULTS") == "1"
FAULT, PACE = "autolora_test_fault", "autolora_test_pace"
ROUTE = "/autolora-test/state"
ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))  # the extension's folder
POINTS = {"setup": "setting up a sampling pass", "base": "the base pass", "lora": "the LoRA pass"}

console_lines: collections.deque[str] = collections.deque(maxlen=50)
console_said = 0  # console lines since start, kept or not
counts: collections.Counter[str] = collections.Counter()


class Generation(Protocol):
    """What the hooks read of a webui.generation.Generation (which imports this module)."""
    p: Processing
    report: RunReport

    @property
    def step_number(self) -> int | None: ...


class InjectedFault(RuntimeError):
    """The exception a test asked for."""


def _requested(generation: Generation, key: str) -> Any:  # what the request sent
    return (getattr(generation.p, "override_settings", None) or {}).get(key)


def inject(generation: Generation, point: str) -> None:
    """Raises InjectedFault at `point` ("setup", "base", "lora") where the request asks for it, while
    AutoLoRA takes part in the generation (after a failure it stands aside, and nothing is left to fail)."""
    if not ARMED:
        return
    name, _, step = str(_requested(generation, FAULT) or "").partition("@")
    if name == point and (not step or int(step) == generation.step_number) and not generation.report.not_applied:
        counts[f"fault {point}"] += 1
        at = f" at step {generation.step_number}" if step else ""
        raise InjectedFault(f"test fault injected in {POINTS[point]}{at} (AUTOLORA_TEST_FAULTS=1)")


def pace(generation: Generation) -> None:
    if ARMED and _requested(generation, PACE):
        time.sleep(float(_requested(generation, PACE)))


def count(event: str) -> None:
    """Counts an event (a generation begun) for the state report."""
    if ARMED:
        counts[event] += 1


def keep_line(line: str) -> None:
    """Keeps one of AutoLoRA's console lines for the state report (the last 50), and counts them."""
    if ARMED:
        global console_said
        console_lines.append(line)
        console_said += 1


def add_settings(shared: Shared) -> None:
    """The override_settings keys a request may send: the WebUI rejects keys it does not know."""
    for key, label in ((FAULT, "Test fault (setup, base@N, lora@N)"), (PACE, "Test pace (s per denoiser call)")):
        shared.opts.add_option(key, shared.OptionInfo("", f"AutoLoRA test hooks: {label}", section=("autolora", "")))


def add_routes(app: Any, report: Callable[[], dict[str, object]]) -> None:  # app: the WebUI's FastAPI
    app.add_api_route(ROUTE, report, methods=["GET"])


# -- the state report --

def _ours(value: object) -> bool:
    function = getattr(value, "func", value)  # functools.partial
    function = getattr(function, "__func__", function)  # bound method
    module = getattr(function, "__module__", None)
    return callable(value) and isinstance(module, str) and module.startswith("lib_autolora")


NOT_HOLDERS = (type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial)


def _holders(objects: Iterable[object]) -> dict[str, int]:
    """Host objects (not AutoLoRA's own) holding AutoLoRA's functions in an attribute or in their
    `model_options` (Forge's patcher hooks), counted by the holder's type name."""
    found: collections.Counter[str] = collections.Counter()
    for obj in objects:
        try:
            kind = type(obj)
            if kind.__module__.startswith("lib_autolora") or isinstance(obj, NOT_HOLDERS):
                continue
            attributes = obj.__dict__ if isinstance(getattr(obj, "__dict__", None), dict) else {}
            values = list(attributes.values())
            options = attributes.get("model_options")
            if isinstance(options, dict):
                values += [f for v in options.values() for f in (v if isinstance(v, list) else [v])]
            held = sum(1 for value in values if _ours(value))
        except Exception:  # noqa: BLE001 (objects whose attributes cannot be read hold nothing of ours)
            continue
        if held:
            found[kind.__name__] += held
    return dict(found)


def _tensors(objects: Sequence[Any], torch: types.ModuleType) -> dict[str, int]:
    storages = {}
    for obj in objects:
        if torch.is_tensor(obj) and obj.layout == torch.strided and not obj.is_meta:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return {"count": sum(1 for obj in objects if torch.is_tensor(obj)), "storages": len(storages),
            "bytes": sum(storages.values())}


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _callbacks(callback_map: Mapping[str, Iterable[Any]]) -> dict[str, int]:  # the WebUI's ScriptCallbacks
    return {name: n for name, callbacks in callback_map.items()
            if (n := sum(1 for c in callbacks if os.path.realpath(c.script).startswith(ROOT)))}


def state(generation_class: type, callback_map: Mapping[str, Iterable[Any]]) -> dict[str, object]:
    """The report; `callback_map` is the WebUI's script_callbacks.callback_map."""
    import torch  # only armed, only when asked

    gc.collect()
    objects = gc.get_objects()
    with warnings.catch_warnings():  # isinstance() on deprecated module proxies warns
        warnings.simplefilter("ignore")
        generations: list[Any] = [obj for obj in objects if isinstance(obj, generation_class)]  # Generations
        switches = [g.switch for g in generations if g.switch is not None]
        report = {
            "callbacks": _callbacks(callback_map), "generations": len(generations),
            "patched": sum(len(g.recorder) for g in generations), "holders": _holders(objects),
            "switch_layers": sum(len(s.layers.ways) for s in switches),
            "switch_bytes": sum(s.held_bytes() for s in switches), "tensors": _tensors(objects, torch),
            "rss": _rss(), "counts": dict(counts), "console": list(console_lines),
            "console_said": console_said, "argv": sys.argv,
        }
    del objects, generations, switches
    return report
