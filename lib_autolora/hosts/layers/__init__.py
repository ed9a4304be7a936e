"""Host-free: how a layer computes without the prompt's networks (`layer_off`), and the switch the
UNet patchers of Forge and reForge share (`weight_switch`). Imports no WebUI module."""
