"""AutoLoRA's lines on the WebUI's console."""
from lib_autolora.webui import testing


def say(line):
    print(line)
    testing.keep_line(line)
