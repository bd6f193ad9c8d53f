"""The house of ../shared/design.md: seven floors, and a module imports only from its own floor or below.

Read from the source with ``ast`` (nothing is imported), so the test needs no Ray and sees lazy imports inside
functions too: those are imports all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import raymlops

ROOT = Path(raymlops.__file__).parent
# Floor of each top-level part of the package (design.md, "Package layout and who may import whom").
FLOORS = {
    "errors": 1,
    "core": 2, "config": 2, "storage": 2, "_ray": 2,
    "data": 3, "features": 3, "model": 3, "registry": 3,
    "train": 4, "evaluation": 4, "serve": 4, "pipeline": 4,
    "ct": 5, "control": 5,
    "demo": 6,
    "cli": 7,
}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        name = ".".join(("raymlops", *f.relative_to(root).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = f
    return out


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target if target and target != "raymlops" else None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the raymlops modules it imports (anywhere in the file)."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for n in names:
                t = _resolve(n, modules) if n.startswith("raymlops") else None
                if t and t != m:
                    edges[m].add(t)
    return edges


def floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(_modules())


def test_every_part_of_the_package_has_a_floor():
    parts = {m.split(".")[1] for m in _modules() if m.count(".") >= 1}
    assert parts <= set(FLOORS) | {"__main__"}, f"give these a floor in design.md and here: {parts - set(FLOORS)}"


def test_no_module_imports_from_a_higher_floor(graph):
    upward = sorted(f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
                    for a, targets in graph.items() for b in targets
                    if floor(a) and floor(b) and floor(b) > floor(a))
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle(graph):
    assert not cycles(graph), cycles(graph)


def test_the_checks_catch_what_they_look_for():
    # A cycle and an upward import, made up, so the two tests above cannot pass by looking at nothing.
    fake = {"raymlops.core.a": {"raymlops.cli"}, "raymlops.cli": {"raymlops.core.a"}}
    assert cycles(fake) == [["raymlops.cli", "raymlops.core.a"]]
    assert floor("raymlops.cli") > floor("raymlops.core.a")


def test_relative_and_lazy_imports_are_seen(tmp_path):
    pkg = tmp_path / "raymlops"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "x.py").write_text("def f():\n    from ..cli import main\n")
    (pkg / "cli.py").write_text("")
    assert import_graph(_modules(pkg))["raymlops.core.x"] == {"raymlops.cli"}
