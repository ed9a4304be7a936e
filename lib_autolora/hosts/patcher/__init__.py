"""What the two families built on a ComfyUI-style UNet patcher (Forge; reForge and Forge Classic)
share: the hooks on the patcher's model options (`hooks`, host-free) and the generation that sets a
sampling pass up on a hooked clone (`generation`)."""
