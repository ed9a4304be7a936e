"""The code that meets the WebUIs, laid out by what each part is:

    a1111/, forge/, reforge/   one package per host family, the only code that imports the WebUI
    a1111_api.py               what every family keeps of A1111's module API (conds, prompt schedules,
                               the Lora extension's list): the base of their generations
    patcher/                   what the two families built on a UNet patcher (forge, reforge) share
    layers/                    host-free: a layer computed without the prompt's networks

Which family runs is decided here, from what imports, never from version strings; no adapter imports
this module.

Each family's package states in REQUIRES what of the WebUI its adapter uses, as (file, text that
file holds, what provides it), so `install.py` can name what an unsupported WebUI lacks before the
first generation instead of failing inside one.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: install.py imports this module, which needs only the standard library
    from lib_autolora.webui.generation import Generation

# (family, the module that marks it, its Generation class); the first whose marker is found runs
FAMILIES = (("forge", "backend.patcher", "ForgeGeneration"),
            ("reforge", "ldm_patched.modules.model_patcher", "ReforgeGeneration"),
            ("a1111", None, "A1111Generation"))


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def family() -> str:
    """The name of the host family that runs us."""
    return next(name for name, marker, _ in FAMILIES if marker is None or _has(marker))


def generation_class() -> type[Generation]:
    """The Generation class of the host family that runs us."""
    name = family()
    adapter = importlib.import_module(f"lib_autolora.hosts.{name}.adapter")
    return getattr(adapter, next(cls for family_name, _, cls in FAMILIES if family_name == name))


def missing(webui_root: str, name: str | None = None) -> list[tuple[str, str]]:
    """What the WebUI at `webui_root` lacks of what the family's adapter uses: [(file, what provides it)]."""
    requires = importlib.import_module(f"lib_autolora.hosts.{name or family()}").REQUIRES
    lacking = []
    for path, text, provider in requires:
        try:
            with open(os.path.join(webui_root, path), encoding="utf-8") as handle:
                found = text in handle.read()
        except OSError:
            found = False
        if not found:
            lacking.append((path, provider))
    return lacking
