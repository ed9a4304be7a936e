"""The one way AutoLoRA changes another program's objects: every change goes through a `Recorder`,
which keeps what was there and puts it back, last change first, when `undo` runs. A generation keeps
one for its patches and hooks, a network switch one for each switch of the networks off.

A switch records hundreds of changes per step, so a change is kept as a plain (mapping, key, previous)
entry, written to the mapping directly (an object's own attributes are its `__dict__`)."""
from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

ABSENT: Any = object()  # as a value: the attribute or key is not there (not set on the object itself)
_RUN = None  # as an entry's mapping: the entry's key is a function to run when undoing


class Recorder:
    def __init__(self) -> None:
        self._undo: list[tuple[Any, Any, Any]] = []  # (mapping, key, previous value or ABSENT)

    def __len__(self) -> int:
        """The changes to undo."""
        return len(self._undo)

    def set_item(self, mapping: MutableMapping[str, Any], key: str, value: Any) -> None:
        """Sets `mapping[key]` (ABSENT removes the key)."""
        self._undo.append((mapping, key, mapping.get(key, ABSENT)))
        if value is ABSENT:
            mapping.pop(key, None)
        else:
            mapping[key] = value

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Sets an attribute on the object itself (its instance `__dict__`; ABSENT removes it there), so that
        undoing uncovers the class's attribute again where the object had none of its own. For plain values
        and functions: a torch module's parameters, buffers and submodules go through `set_slot`."""
        self.set_item(obj.__dict__, name, value)

    def set_slot(self, module: Any, name: str, value: Any) -> None:
        """Sets a torch module's tensor slot: its Parameter entry where it has one (read past
        nn.Module.__getattr__, which a switch over hundreds of layers would pay twice), else the attribute."""
        parameters = module._parameters
        if name in parameters:
            self.set_item(parameters, name, value)
            return
        previous = getattr(module, name)
        setattr(module, name, value)
        self.on_undo(lambda: setattr(module, name, previous))

    def set_list(self, items: list[Any], values: list[Any]) -> None:
        """Replaces a list's contents in place (its owner keeps the same list object)."""
        previous = list(items)
        items[:] = values
        self.on_undo(lambda: items.__setitem__(slice(None), previous))

    def on_undo(self, function: Callable[[], None]) -> None:
        """Runs `function` when undoing, in its turn: for state the recorder did not set itself (a copy the
        host made of an object holding AutoLoRA's hooks)."""
        self._undo.append((_RUN, function, None))

    def undo(self) -> None:
        """Puts everything back, last change first; each undo step runs once even if a later one raises."""
        entries = self._undo
        while entries:
            mapping, key, previous = entries.pop()
            if mapping is _RUN:
                key()
            elif previous is ABSENT:
                mapping.pop(key, None)
            else:
                mapping[key] = previous
