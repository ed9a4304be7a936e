"""The one way AutoLoRA changes another program's objects: every change goes through a `Recorder`,
which keeps what was there and puts it back, last change first, when `undo` runs. A generation keeps
one for its patches and hooks, a network switch one for each switch of the networks off."""
from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

ABSENT: Any = object()  # as a value: the attribute or key is not there (not set on the object itself)


def _put(mapping: MutableMapping[str, Any], key: str, value: Any) -> None:
    if value is ABSENT:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _set_own(obj: Any, name: str, value: Any) -> None:
    if value is ABSENT:
        obj.__dict__.pop(name, None)
    else:
        setattr(obj, name, value)


class Recorder:
    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def __len__(self) -> int:
        """The changes to undo."""
        return len(self._undo)

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Sets an attribute on the object itself (its instance `__dict__`; ABSENT removes it there), so that
        undoing uncovers the class's attribute again where the object had none of its own."""
        previous = obj.__dict__.get(name, ABSENT)
        _set_own(obj, name, value)
        self._undo.append(lambda: _set_own(obj, name, previous))

    def set_item(self, mapping: MutableMapping[str, Any], key: str, value: Any) -> None:
        """Sets `mapping[key]` (ABSENT removes the key)."""
        previous = mapping.get(key, ABSENT)
        _put(mapping, key, value)
        self._undo.append(lambda: _put(mapping, key, previous))

    def set_slot(self, module: Any, name: str, value: Any) -> None:
        """Sets a torch module's tensor slot: its Parameter entry where it has one (read past
        nn.Module.__getattr__, which a switch over hundreds of layers would pay twice), else the attribute."""
        if name in module._parameters:
            self.set_item(module._parameters, name, value)
            return
        previous = getattr(module, name)
        setattr(module, name, value)
        self._undo.append(lambda: setattr(module, name, previous))

    def set_list(self, items: list[Any], values: list[Any]) -> None:
        """Replaces a list's contents in place (its owner keeps the same list object)."""
        previous = list(items)
        items[:] = values
        self._undo.append(lambda: items.__setitem__(slice(None), previous))

    def on_undo(self, function: Callable[[], None]) -> None:
        """Runs `function` when undoing, in its turn: for state the recorder did not set itself (a copy the
        host made of an object holding AutoLoRA's hooks)."""
        self._undo.append(function)

    def undo(self) -> None:
        """Puts everything back, last change first; each undo step runs once even if a later one raises."""
        while self._undo:
            self._undo.pop()()
