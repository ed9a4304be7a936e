"""AUTOMATIC1111: the adapter on its CFG denoiser and the switch of its built-in Lora networks."""

# What the adapter uses: (file in the WebUI, text it holds, what provides it)
REQUIRES = (
    ("modules/scripts.py", "def process_before_every_sampling", "A1111 v1.10.0 or later"),
    ("modules/ui_components.py", "class InputAccordion", "A1111 v1.6.0 or later"),
    ("modules/sd_samplers_cfg_denoiser.py", "def pad_cond_uncond_v0", "A1111 v1.8.0 or later"),
    ("modules/processing.py", "def calculate_hr_conds", "A1111 v1.6.0 or later"),
    ("extensions-builtin/Lora/networks.py", "network_current_names", "A1111's built-in Lora extension"),
)
