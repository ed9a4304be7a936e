"""What the accordion shows of the fields, apart from gradio (ui.py builds it): the table of the
controls that follow a scale of the generation, which the page's script (javascript/autolora.js)
reads from the tab's notice element."""
import html
import json

from lib_autolora.core.params import FIELDS


def follow_table(fields=FIELDS):
    """AutoLoRA control -> [[the generation's control it follows at 0, its label], ...], first found wins."""
    return {f.name: [list(control) for control in f.follows] for f in fields if f.follows}


def notice_html(fields=FIELDS):
    """The notice element's content: nothing to see, the follow table for the page's script."""
    return f'<div class="autolora-follows" hidden data-follows="{html.escape(json.dumps(follow_table(fields)))}"></div>'
