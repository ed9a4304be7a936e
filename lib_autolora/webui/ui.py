"""The AutoLoRA accordion, built from the parameters' fields (labels, ranges, hints, where each goes:
lib_autolora/webui/accordion.py), with the settings' defaults; shared by both hosts (gradio 3 on
A1111, gradio 4 on Forge)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import gradio as gr

from lib_autolora.core.params import FIELDS, FIELDS_BY_NAME, AutoLoraParams, Field
from lib_autolora.webui import accordion, settings
from lib_autolora.webui.host_objects import Component, Options

Reader = Callable[[Mapping[str, object]], object]  # parsed infotext -> a control's value


def _component(field: Field, value: object, elem_id: str) -> Component:
    if field.kind == "number":
        return gr.Slider(label=field.label, info=field.hint, minimum=field.minimum, maximum=field.maximum,
                         step=field.step, value=value, elem_id=elem_id)
    if field.kind == "choice":
        return gr.Radio(label=field.label, info=field.hint, choices=list(field.choices), value=value, elem_id=elem_id)
    return gr.Checkbox(label=field.label, info=field.hint, value=value, elem_id=elem_id)


def _add_rows(rows: Sequence[Sequence[Field]], add: Callable[[Field], None]) -> None:
    """A row of one field is the field alone, a longer one a gr.Row."""
    for row in rows:
        if len(row) == 1:
            add(row[0])
            continue
        with gr.Row():
            for field in row:
                add(field)


def build(tab: str, opts: Options, input_accordion: Callable[..., Component],
          switched_off: bool = False) -> list[Component]:
    """The components, in the order of FIELDS (the script's positional arguments); `input_accordion`
    is the WebUI's accordion with an enable box in its header."""
    defaults = settings.defaults(opts)
    layout = accordion.sections()
    made: dict[str, Component] = {}

    def add(field: Field) -> None:
        made[field.name] = _component(field, defaults[field.name], f"autolora_{tab}_{field.name}")

    with input_accordion(False, label="AutoLoRA", elem_id=f"autolora_{tab}_enabled") as enabled:
        made["enabled"] = enabled
        gr.Markdown(FIELDS_BY_NAME["enabled"].hint)
        if switched_off:
            gr.Markdown("**Switched off on this server** (`--autolora-off`): generations run as usual.")
        # javascript/autolora.js writes its notice here, and reads the follow table it carries
        gr.HTML(accordion.notice_html(), elem_id=f"autolora_{tab}_notice")
        _add_rows(layout["main"], add)
        with gr.Accordion("More", open=False, elem_id=f"autolora_{tab}_more"):
            _add_rows(layout["more"], add)
    return [made[field.name] for field in FIELDS]


def infotext_fields(components: Sequence[Component]) -> list[tuple[Component, Reader]]:
    """(component, reader) pairs: a pasted infotext sets every control; text without AutoLoRA keys
    gives the built-in defaults, so it leaves AutoLoRA disabled."""
    def reader(index: int) -> Reader:
        return lambda entries: AutoLoraParams.from_infotext(entries).to_args()[index]
    return [(component, reader(index)) for index, component in enumerate(components)]
