"""Tier 1: the package's layers, read from its import statements: core <- webui <- hosts, tools on
core alone; no import circle; only the host folders import the WebUI.

`python tests/unit/test_layout.py` prints the package's internal import graph."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "lib_autolora"
LAYERS = ("core", "webui", "hosts", "tools")  # a layer may import itself and the ones it is allowed below
ALLOWED = {"core": {"core"}, "webui": {"core", "webui"}, "hosts": {"core", "webui", "hosts"},
           "tools": {"core", "tools"}}
WEBUI_MODULES = ("modules", "backend", "ldm_patched", "modules_forge", "networks", "network", "lora")


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Absolute names of every module `path` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def graph():
    """{module: set of lib_autolora modules it imports}, and {module: WebUI modules it imports}."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    internal, webui = {}, {}
    for name, path in modules.items():
        found = imports(path)
        internal[name] = {m for m in found if m in modules and m != name}
        webui[name] = {m for m in found if m.split(".")[0] in WEBUI_MODULES}
    return internal, webui


def layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def cycles(internal):
    """Modules on an import circle (depth-first search for back edges)."""
    on_cycle, state = set(), {}

    def visit(node, stack):
        state[node] = "open"
        for target in internal[node]:
            if state.get(target) == "open":
                on_cycle.update(stack[stack.index(target):])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(internal):
        if node not in state:
            visit(node, [node])
    return on_cycle


def test_every_module_belongs_to_a_layer():
    internal, _ = graph()
    assert {layer(m) for m in internal} - {None} == set(LAYERS)


def test_no_import_circle():
    internal, _ = graph()
    assert cycles(internal) == set()


def test_each_layer_imports_only_itself_and_the_layers_below():
    internal, _ = graph()
    wrong = {(m, t) for m, targets in internal.items() for t in targets
             if layer(m) and layer(t) not in ALLOWED[layer(m)]}
    assert wrong == set()


def test_host_selection_is_imported_by_no_adapter():
    internal, _ = graph()
    assert [m for m, targets in internal.items() if "lib_autolora.hosts" in targets] == []


def test_only_the_host_folders_import_the_webui():
    _, webui = graph()
    importers = {m for m, found in webui.items() if found}
    assert importers and all(m.startswith("lib_autolora.hosts.") for m in importers), importers


def test_the_core_needs_no_torch():
    internal, _ = graph()
    core = [PACKAGE.parent / (m.replace(".", "/") + ".py") for m in internal if layer(m) == "core"]
    assert all("torch" not in {n.split(".")[0] for n in imports(p)} for p in core if p.exists())


# modules that change objects without the recorder, and why: the lifecycle keeps its generation on `p`
# (finished by its owner), the X/Y/Z axes set values on the plot's own copy of `p`, the patcher hooks
# mark functions of their own and empty the copies a host made of hooked options
CHANGES_WITHOUT_RECORDER = {"lib_autolora.core.recorder", "lib_autolora.webui.lifecycle", "lib_autolora.webui.xyz",
                            "lib_autolora.hosts.patcher.hooks"}


def object_changes(path):
    """Lines of `path` that set or delete attributes or write an object's `__dict__` directly."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
        method = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "__dict__" \
            and node.func.attr in ("pop", "update", "setdefault", "clear")
        item = isinstance(node, (ast.Assign, ast.Delete)) and any(
            isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and t.value.attr == "__dict__"
            for t in getattr(node, "targets", []))
        if call or method or item:
            lines.append(node.lineno)
    return lines


def test_only_the_recorder_sets_and_undoes():
    """Every patch, hook and switch goes through core.recorder (the modules above say why they do not)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    found = {name: object_changes(path) for name, path in modules.items() if name not in CHANGES_WITHOUT_RECORDER}
    assert {name: lines for name, lines in found.items() if lines} == {}
    assert object_changes(modules["lib_autolora.core.recorder"]), "the check sees what the recorder does"


def test_the_checks_see_a_circle_and_a_layer_break():
    internal = {"lib_autolora.core.a": {"lib_autolora.webui.b"}, "lib_autolora.webui.b": {"lib_autolora.core.a"}}
    assert cycles(internal) == set(internal)
    assert "webui" not in ALLOWED[layer("lib_autolora.core.a")]


if __name__ == "__main__":
    internal, webui = graph()
    for name in sorted(internal):
        packages = sorted({m.split(".")[0] for m in webui[name]})
        outside = f"   [imports the WebUI: {', '.join(packages)}]" if packages else ""
        print(f"{name} -> {', '.join(sorted(internal[name])) or '-'}{outside}")
