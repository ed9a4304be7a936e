"""Tier 1: the recorder that every patch, hook and switch goes through: what it sets it puts back,
last change first, and an object's own attributes stay apart from its class's."""
import torch

from lib_autolora.core.recorder import ABSENT, Recorder


class Thing:
    shared = "class value"


def test_undo_restores_attributes_items_slots_and_lists_last_change_first():
    thing, options, items = Thing(), {"kept": 1}, [1, 2]
    thing.own = "before"
    layer = torch.nn.Linear(2, 2)
    weight, replacement = layer.weight, torch.nn.Parameter(torch.zeros(2, 2))
    order = []
    recorder = Recorder()
    recorder.set_attr(thing, "own", "after")
    recorder.set_attr(thing, "shared", "instance value")
    recorder.set_attr(thing, "own", "again")  # a second change of the same attribute undoes to the first's value
    recorder.set_item(options, "kept", 2)
    recorder.set_item(options, "new", 3)
    recorder.set_slot(layer, "weight", replacement)
    recorder.set_list(items, [])
    recorder.on_undo(lambda: order.append("first registered, run last"))
    recorder.on_undo(lambda: order.append("last registered, run first"))
    assert (thing.own, thing.shared, options, items, len(recorder)) == ("again", "instance value",
                                                                         {"kept": 2, "new": 3}, [], 9)
    assert layer.weight is replacement and layer._parameters["weight"] is replacement
    recorder.undo()
    assert thing.own == "before" and "shared" not in thing.__dict__ and thing.shared == "class value"
    assert options == {"kept": 1} and items == [1, 2] and layer.weight is weight
    assert order == ["last registered, run first", "first registered, run last"] and len(recorder) == 0
    recorder.undo()  # undoing twice changes nothing
    assert thing.own == "before" and options == {"kept": 1}


def test_absent_removes_what_was_there_and_undo_brings_it_back():
    thing, options = Thing(), {"key": "value"}
    thing.own = "mine"
    recorder = Recorder()
    recorder.set_attr(thing, "own", ABSENT)
    recorder.set_item(options, "key", ABSENT)
    recorder.set_attr(thing, "missing", ABSENT)  # nothing there: nothing to remove, nothing to bring back
    assert "own" not in thing.__dict__ and options == {}
    recorder.undo()
    assert thing.own == "mine" and options == {"key": "value"} and "missing" not in thing.__dict__
