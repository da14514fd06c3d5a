"""The package layout is layered: each module imports only from its own room or rooms below it, and no two modules
import each other, directly or around a loop (docs/design.md §9 lists the rooms).

Imports are read from the source (``ast``), lazy ones inside functions included, so that a command's deferred
import cannot hide a loop; ``TYPE_CHECKING`` blocks count too, since they name the dependency all the same."""

import ast
from collections import defaultdict
from pathlib import Path

import cftool

PACKAGE = Path(cftool.__file__).parent

# Rooms from the bottom up; a room may import from itself and from any room before it. Rooms on one line are
# siblings: neither imports the other.
LAYERS = [
    ("__init__", "errors", "metrics", "options"),
    ("io", "recipes"),
    ("zoo",),
    ("data",),
    ("merge",),
    ("encode",),
    ("kinds",),
    ("eval", "train"),
    ("cli",),
    ("__main__",),
]


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("cftool", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph = defaultdict(set)
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            else:
                continue
            for target in targets:
                imported = owner(target) if target.startswith("cftool") else None
                if imported and imported != module:
                    graph[module].add(imported)
    return graph


def level_of(name: str) -> int:
    for level, rooms in enumerate(LAYERS):
        if name in rooms:
            return level
    raise AssertionError(f"room {name!r} is not in LAYERS: place it there and in docs/design.md §9")


def test_every_import_runs_down_or_within_its_room():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if room(target) != room(module) and level_of(room(target)) >= level_of(room(module))
    )
    assert upward == []


def test_no_module_imports_itself_around_a_loop():
    graph = import_graph()
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    assert loops == []
