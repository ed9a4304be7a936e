"""AutoLoRA guidance for the WebUI: the script's UI and hooks; the logic is in lib_autolora."""
import gradio as gr

from lib_autolora import webui as host
from lib_autolora.params import FIELDS_BY_NAME, AutoLoraParams
from modules import scripts
from modules.ui_components import InputAccordion

host.install_callbacks()


def _slider(name, step, elem_id):
    field = FIELDS_BY_NAME[name]
    value = 0.0 if field.default is None else field.default
    return gr.Slider(label=field.label, info=field.hint, minimum=field.minimum, maximum=field.maximum,
                     step=step, value=value, elem_id=elem_id)


def _from_infotext(name):
    """Infotext paste: the field's value in UI form; text without AutoLoRA keys disables it."""
    def read(entries):
        return AutoLoraParams.from_infotext(entries).to_args()[list(FIELDS_BY_NAME).index(name)]
    return read


class AutoLoraScript(scripts.Script):
    def title(self):
        return "AutoLoRA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        tab = "img2img" if is_img2img else "txt2img"
        enabled_field = FIELDS_BY_NAME["enabled"]
        with InputAccordion(False, label="AutoLoRA", elem_id=f"autolora_{tab}_enabled") as enabled:
            gr.Markdown(enabled_field.hint)
            gamma = _slider("gamma", 0.05, f"autolora_{tab}_gamma")
            with gr.Row():
                base_cfg = _slider("base_cfg", 0.5, f"autolora_{tab}_base_cfg")
                lora_cfg = _slider("lora_cfg", 0.5, f"autolora_{tab}_lora_cfg")
            with gr.Row():
                start = _slider("start", 0.01, f"autolora_{tab}_start")
                end = _slider("end", 0.01, f"autolora_{tab}_end")
            base_te_field = FIELDS_BY_NAME["base_text_encoder"]
            base_text_encoder = gr.Checkbox(label=base_te_field.label, info=base_te_field.hint,
                                            value=base_te_field.default, elem_id=f"autolora_{tab}_base_te")
        components = [enabled, gamma, base_cfg, lora_cfg, start, end, base_text_encoder]
        self.infotext_fields = [(component, _from_infotext(name)) for component, name in zip(components, FIELDS_BY_NAME)]
        self.paste_field_names = [FIELDS_BY_NAME[name].infotext for name in FIELDS_BY_NAME]
        return components

    def process(self, p, *args):
        host.begin(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        host.prepare_pass(p)

    def postprocess(self, p, processed, *args):
        host.finish(p)
