"""AutoLoRA guidance for the Stable Diffusion WebUIs.

The package in layers, each importing only from the layers above it in this list:

    core/     the method itself: parameters, guidance math, the console report; no WebUI, no torch
    webui/    what every WebUI shares: a generation's lifecycle, the accordion, settings, X/Y/Z axes;
              the WebUI's own modules are handed in, never imported
    hosts/    one sub-package per host family (a1111, forge, reforge), the only code that imports the
              WebUI, and what families share (a1111_api, patcher/, layers/); `hosts.generation_class()`
              picks the family from what imports
    tools/    the paper's tools (toy demo, diversity metric, API sweep); import no WebUI

`scripts/autolora.py` is the WebUI's entry point and the one place that ties them together.
"""
