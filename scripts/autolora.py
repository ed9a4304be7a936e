"""AutoLoRA guidance for the WebUI: the script's hooks; the logic is in lib_autolora."""
import gradio as gr

from lib_autolora import hosts
from lib_autolora.core.params import FIELDS
from lib_autolora.webui import lifecycle, settings, testing, ui, xyz

from modules import script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

GENERATION = hosts.generation_class()
SWITCHED_OFF = getattr(shared.cmd_opts, "autolora_off", False)  # preload.py's option

script_callbacks.on_cfg_denoiser(lifecycle.on_cfg_denoiser)
script_callbacks.on_ui_settings(lambda: settings.add_settings(shared, gr))


def _add_xyz_axes():
    for data in scripts.scripts_data:
        if data.script_class.__module__ == "xyz_grid.py":
            xyz.add_axes(data.module)


script_callbacks.on_before_ui(_add_xyz_axes)

if testing.ARMED:  # AUTOLORA_TEST_FAULTS=1: the live hardening tests' hooks (lib_autolora/webui/testing.py)
    script_callbacks.on_ui_settings(lambda: testing.add_settings(shared))
    script_callbacks.on_app_started(lambda _blocks, app: testing.add_routes(
        app, lambda: testing.state(GENERATION, script_callbacks.callback_map)))


class AutoLoraScript(scripts.Script):
    def title(self):
        return "AutoLoRA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        components = ui.build("img2img" if is_img2img else "txt2img", shared.opts, InputAccordion, SWITCHED_OFF)
        self.infotext_fields = ui.infotext_fields(components)
        self.paste_field_names = [field.infotext for field in FIELDS]
        return components

    def process(self, p, *args):
        lifecycle.begin(p, args, shared.opts, GENERATION, SWITCHED_OFF)

    def process_before_every_sampling(self, p, *args, **kwargs):
        lifecycle.prepare_pass(p)

    def post_sample(self, p, ps, *args):
        lifecycle.end_sampling(p)

    def postprocess(self, p, processed, *args):
        lifecycle.finish(p, shared.state)
