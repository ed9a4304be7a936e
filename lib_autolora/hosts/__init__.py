"""One sub-package per host family. Which one runs is decided here, from what imports, never from
version strings; no adapter imports this module."""
import importlib.util


def _has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def is_forge():
    """Forge's 2024-25 backend (and the forks that keep it) has `backend.patcher`."""
    return _has("backend.patcher")


def generation_class():
    """The Generation class of the host family that runs us."""
    if is_forge():
        from lib_autolora.hosts.forge.adapter import ForgeGeneration
        return ForgeGeneration
    from lib_autolora.hosts.a1111.adapter import A1111Generation
    return A1111Generation
