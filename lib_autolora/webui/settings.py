"""Settings → AutoLoRA: defaults for the controls, and whether the console line is printed.
Values are read from the options' data, so they work before and after the section is built."""
from __future__ import annotations

from collections.abc import Iterable

from lib_autolora.core.params import FIELDS, Field, fields_but_enabled
from lib_autolora.webui.host_objects import Gradio, Options, Shared

SECTION = ("autolora", "AutoLoRA")
CONSOLE_SUMMARY = "autolora_console_summary"


def key(field: Field) -> str:
    return f"autolora_default_{field.name}"


def defaults(opts: Options, fields: Iterable[Field] = FIELDS) -> dict[str, object]:
    """Field name -> default from the settings; the parameters type reads 0 CFG as "follow"."""
    return {field.name: opts.data.get(key(field), field.ui_form(field.default)) for field in fields_but_enabled(fields)}


def console_summary(opts: Options) -> bool:
    return opts.data.get(CONSOLE_SUMMARY, True)


def add_settings(shared: Shared, gr: Gradio, fields: Iterable[Field] = FIELDS) -> None:
    for field in fields_but_enabled(fields):
        args: dict[str, object]
        if field.kind == "number":
            component, args = gr.Slider, {"minimum": field.minimum, "maximum": field.maximum, "step": field.step}
        elif field.kind == "choice":
            component, args = gr.Radio, {"choices": list(field.choices)}
        else:
            component, args = gr.Checkbox, {}
        info = shared.OptionInfo(field.ui_form(field.default), f"Default {field.label}", component, args,
                                 section=SECTION)
        shared.opts.add_option(key(field), info.info(field.details or field.hint))
    shared.opts.add_option(CONSOLE_SUMMARY, shared.OptionInfo(
        True, "Print one line per generation saying what AutoLoRA did", section=SECTION))
