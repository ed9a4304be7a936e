"""Which WebUI runs us, from what imports (never from version strings): Forge has `backend.patcher`."""
import importlib.util


def is_forge():
    try:
        return importlib.util.find_spec("backend.patcher") is not None
    except ModuleNotFoundError:  # no `backend` package at all
        return False
