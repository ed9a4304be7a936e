"""Forge (the 2024-25 `backend/` line and its forks): the adapter on its UNet patcher and the switch
of its LoRA patches."""
