"""The core's module graph: no import circles (imports inside functions count too); the colliding names are gone.

Every module of RCSegNeXtCore is parsed with `ast`; each `import` / `from ... import` anywhere in it (top level,
functions, TYPE_CHECKING blocks) is an edge to the RCSegNeXtCore module it names: `from RCSegNeXtCore.x import y`
points at RCSegNeXtCore.x.y when y is a submodule, else at RCSegNeXtCore.x; relative imports are resolved against the
importing module's package. Importing a submodule also runs its package's __init__, but a package importing its own
submodules is how packages are built, so only the named module counts.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

CORE = Path(__file__).resolve().parents[1] / "RCSegNeXtCore"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py")) if "__pycache__" not in p.parts}


def imported_modules(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The core modules `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import RCSegNeXtCore.a.b` names a.b; attributes are dropped
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = core_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import circle as [a, b, ..., a], or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_correctly():
    graph = import_graph()
    assert "RCSegNeXtCore.errors" in graph["RCSegNeXtCore.plans"]
    assert "RCSegNeXtCore.network" in graph["RCSegNeXtCore.plans"]                  # inside build_network
    assert "RCSegNeXtCore.phantom.case" in graph["RCSegNeXtCore.phantom"]            # package -> submodule
    assert "RCSegNeXtCore" in graph["RCSegNeXtCore.cli"]                             # from RCSegNeXtCore import __version__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_in_the_core():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_colliding_modules_are_gone():
    """planner / plans / data.planning, checkpoint / training.checkpointing and predict / inference.predictor were
    names for different things that read alike; each pair now has one name per thing."""
    for gone in ("planner.py", "data/planning.py", "training/checkpointing.py", "predict.py", "data/phantom.py"):
        assert not (CORE / gone).exists(), gone
