"""The reForge family: reForge, Forge Classic and Forge before its 2024 backend rewrite, whose
backend is the ComfyUI-derived `ldm_patched` package: the adapter on its UNet patcher's sampler
hooks and the switch of its merged LoRA weights."""

# What the adapter uses: (file in the WebUI, text it holds, what provides it)
REQUIRES = (
    ("modules/scripts.py", "def process_before_every_sampling", "the script hook process_before_every_sampling"),
    ("modules/processing.py", "def calculate_hr_conds", "the hires. fix conds of A1111 v1.6 or later"),
    ("ldm_patched/modules/samplers.py", "def calc_cond_uncond_batch", "ldm_patched's batched cond/uncond evaluation"),
    ("ldm_patched/modules/samplers.py", "sampler_post_cfg_function", "ldm_patched's post-CFG functions"),
    ("ldm_patched/modules/model_patcher.py", "self.backup", "ldm_patched's ModelPatcher with weight backups"),
    ("modules_forge/forge_sampler.py", "def cond_from_a1111_to_patched_ldm_weighted", "Forge's ldm_patched conds"),
    ("modules_forge/unet_patcher.py", "conditioning_modifiers", "Forge's conditioning modifiers"),
    ("modules_forge/forge_loader.py", "forge_objects_original", "Forge's original text encoder objects"),
)
