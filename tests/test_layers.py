"""The package's layers, checked on its imports (torchtune's tests/test_import_recipes.py is the model).

Every `import` of a skillweave module, at module level or inside a function, is an edge:
- no import cycle anywhere;
- plugins (a module of a plugin package) never import another plugin;
- the engine (skillweave.core) and the library (every other module but the top layer) import no plugin;
- nothing imports the top layer (the CLI, the app that loads the plugins, the launchers) but itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skillweave"
PLUGIN_PACKAGES = ("skillweave.stages", "skillweave.eval_configs", "skillweave.compressors", "skillweave.domains", "skillweave.skills")
TOP = ("skillweave.__main__", "skillweave.app", "skillweave.launch", "skillweave.sweep", "skillweave.verify")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The skillweave modules `path` imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def in_package(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def plugin_of(module: str):
    """The plugin a module belongs to (a module or a subpackage of a plugin package: a domain folder is
    one plugin), or None."""
    for p in PLUGIN_PACKAGES:
        if module.startswith(p + "."):
            return f"{p}.{module[len(p) + 1:].split('.')[0]}"
    return None


def test_the_walk_sees_the_package():
    assert {"skillweave.core.engine", "skillweave.stages.dpo", "skillweave.eval_configs.models"} <= set(GRAPH)
    assert "skillweave.core.engine" in GRAPH["skillweave.stages.dpo"]


def test_no_import_cycle():
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if plugin_of(m)))
def test_a_plugin_imports_no_other_plugin(module):
    assert sorted(m for m in GRAPH[module] if plugin_of(m) and plugin_of(m) != plugin_of(module)) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if not plugin_of(m) and not in_package(m, TOP)))
def test_engine_and_library_import_no_plugin_and_nothing_above(module):
    above = [m for m in GRAPH[module] if plugin_of(m) or in_package(m, TOP)]
    assert above == []


def test_no_bottom_of_file_imports():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "noqa: E402" in p.read_text()]
    assert offenders == []
