"""AutoLoRA's lines on the WebUI's console."""
from __future__ import annotations

from lib_autolora.webui import testing


def say(line: str) -> None:
    print(line)
    testing.keep_line(line)
