"""AUTOMATIC1111: the adapter on its CFG denoiser and the switch of its built-in Lora networks."""
