"""Forge (the 2024-25 `backend/` line and its forks): the adapter on its UNet patcher and the switch
of its LoRA patches."""

# What the adapter uses: (file in the WebUI, text it holds, what provides it)
REQUIRES = (
    ("modules/scripts.py", "def process_before_every_sampling", "Forge's script hooks"),
    ("backend/sampling/sampling_function.py", "def calc_cond_uncond_batch", "Forge's backend sampling function"),
    ("backend/sampling/sampling_function.py", "sampler_post_cfg_function", "Forge's post-CFG functions"),
    ("backend/sampling/condition.py", "def compile_weighted_conditions", "Forge's backend conditions"),
    ("backend/patcher/lora.py", "online_backup", "Forge's LoRA loader with online LoRA (2024-25 backend)"),
    ("backend/diffusion_engine/base.py", "forge_objects_original", "Forge's original text encoder objects"),
)
