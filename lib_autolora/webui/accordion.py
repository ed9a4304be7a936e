"""What the accordion shows of the fields, apart from gradio (ui.py builds it): where each control
goes (up front or under More, in which row), and the table of the controls that follow a scale of
the generation, which the page's script (javascript/autolora.js) reads from the tab's notice element."""
from __future__ import annotations

import html
import json
from collections.abc import Iterable

from lib_autolora.core.params import FIELDS, Field, fields_but_enabled

SECTIONS = ("main", "more")  # up front; in the closed More accordion below them


def _rows(fields: Iterable[Field]) -> list[list[Field]]:
    """The fields in rows: those next to each other with the same `row` share one."""
    rows: list[list[Field]] = []
    for field in fields:
        if rows and field.row and rows[-1][-1].row == field.row:
            rows[-1].append(field)
        else:
            rows.append([field])
    return rows


def sections(fields: Iterable[Field] = FIELDS) -> dict[str, list[list[Field]]]:
    """Section -> its rows of fields, in the fields' order; the enable flag is the accordion's own box."""
    return {section: _rows([f for f in fields_but_enabled(fields) if f.section == section]) for section in SECTIONS}


def follow_table(fields: Iterable[Field] = FIELDS) -> dict[str, list[list[str]]]:
    """AutoLoRA control -> [[the generation's control it follows at 0, its label], ...], first found wins."""
    return {f.name: [list(control) for control in f.follows] for f in fields if f.follows}


def notice_html(fields: Iterable[Field] = FIELDS) -> str:
    """The notice element's content: nothing to see, the follow table for the page's script."""
    return f'<div class="autolora-follows" hidden data-follows="{html.escape(json.dumps(follow_table(fields)))}"></div>'
