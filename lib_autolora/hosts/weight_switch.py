"""Switching a UNet patcher's LoRA off for the base pass of a step, and back on: what Forge and the
ldm_patched family share.

Both patchers merge LoRA into the weights and keep each original in a backup (key -> original, on
the offload device), and both can instead apply patches at each forward on some layers (Forge's
online LoRA, ldm_patched's low-VRAM patches). Switching off puts the originals (copied to the
weight's device once per generation, or the very same tensors where they already live there) in
place of the merged weights and takes the per-forward patches off their layers; switching on puts
everything back. No weight is written, so both states are exact, and a switch is a loop of
attribute assignments. The originals always come from the backup, never from the model's
Parameter: a patcher that updates weights in place has overwritten that Parameter's data.

Host-free: a subclass says where its host keeps the backup and the per-forward patches.
"""
import contextlib
import time

import torch

ABSENT = object()  # an attribute that is not set on the object itself


def _owner(model, key):
    """(module, attribute name) of a parameter key such as 'diffusion_model.out.2.weight'."""
    path, _, name = key.rpartition(".")
    return (model.get_submodule(path) if path else model), name


def _assign(obj, name, value):
    if value is ABSENT:
        obj.__dict__.pop(name, None)
    else:
        setattr(obj, name, value)


class WeightSwitch:
    def __init__(self, model):
        self.model = model  # the torch module the backup's keys are relative to
        self._base = {}  # key -> (backed-up original, the Parameter put in its place, whether that is a copy)
        self.switches = 0
        self.switch_seconds = 0.0

    def originals(self):
        """{parameter key: original tensor} for every weight merged now."""
        raise NotImplementedError

    def online_patches(self):
        """[(object, attribute, its value with the networks off, or ABSENT)] for patches applied at each forward."""
        raise NotImplementedError

    def held_bytes(self):
        """Memory held by copies of originals (none where the originals already live on that device)."""
        return sum(base.numel() * base.element_size() for _, base, copied in self._base.values() if copied)

    def release(self):
        self._base.clear()

    def _original(self, key, original, merged):
        cached = self._base.get(key)
        if cached is not None and cached[0] is original:
            return cached[1]
        moved = original.to(device=merged.device, dtype=merged.dtype)
        base = moved if isinstance(moved, torch.nn.Parameter) else torch.nn.Parameter(moved, requires_grad=False)
        self._base[key] = (original, base, moved is not original)
        return base

    @contextlib.contextmanager
    def networks_off(self):
        originals, online = self.originals(), self.online_patches()
        if not originals and not online:
            yield
            return
        started = time.perf_counter()
        undo = []  # (object, attribute, value to put back)
        try:
            for key, original in originals.items():
                module, name = _owner(self.model, key)
                merged = getattr(module, name)
                undo.append((module, name, merged))
                setattr(module, name, self._original(key, original, merged))
            for obj, name, off in online:
                undo.append((obj, name, obj.__dict__.get(name, ABSENT)))
                _assign(obj, name, off)
            self.switches += 1
            self.switch_seconds += time.perf_counter() - started
            yield
        finally:
            started = time.perf_counter()
            for obj, name, value in reversed(undo):
                _assign(obj, name, value)
            self.switch_seconds += time.perf_counter() - started
