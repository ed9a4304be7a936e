"""AutoLoRA guidance: the host-free core of sd-webui-autolora.

Nothing in this package imports the WebUI at module level except the host adapters
(`lib_autolora.a1111`), so the core can be tested anywhere torch runs.
"""
