"""The import graph of src/edm2lib (function-level imports included) has no cycle and no upward edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Layer of each top-level part of edm2lib, lowest first (docs/ARCHITECTURE.md, code layers). A module may
# import its own part and any part of a lower layer, never one of a higher layer.
LAYERS = {
    "nn": 0,
    "files": 1,
    "distributed": 1,
    "data": 2,
    "training": 2,
    "phema": 2,
    "sampling": 2,
    "metrics": 2,
    "official": 2,
    "pipeline": 3,
    "__init__": 4,  # `import edm2lib`: the lazy top-level names
    "__main__": 4,
}
# Parts of one layer that must not import each other (the contract homes stay independent).
INDEPENDENT = {"files": {"distributed"}, "distributed": {"files"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """edm2lib modules imported anywhere in a file (module level, functions, methods)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edm2lib")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "edm2lib":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub) else target)
    found.discard(name)
    return found


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted((SRC / "edm2lib").rglob("*.py"))}


def test_every_part_has_a_layer():
    unknown = {part(m) for m in import_graph()} - set(LAYERS)
    assert not unknown, f"add {sorted(unknown)} to LAYERS in tests/test_layering.py"


def test_no_upward_edge():
    bad = []
    for module, targets in import_graph().items():
        src = part(module)
        for target in sorted(targets):
            dst = part(target)
            if dst == src:
                continue
            if LAYERS[dst] > LAYERS[src] or dst == "__init__" or dst in INDEPENDENT.get(src, ()):
                bad.append(f"{module} -> {target}")
            if src == "nn" or (LAYERS[src] == 1 and dst != "nn"):
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layer order: " + ", ".join(sorted(set(bad)))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_parts():
    parts: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        if part(module) in ("__init__", "__main__"):
            continue
        parts.setdefault(part(module), set()).update(part(t) for t in targets if part(t) != part(module))
    cycle = _cycle(parts)
    assert cycle is None, "cycle between parts of edm2lib: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from edm2lib import files\n", {"edm2lib.files"}),
        ("def f():\n    from edm2lib.pipeline import steps\n", {"edm2lib.pipeline.steps"}),
        ("from . import heun\n", {"edm2lib.sampling.heun"}),
        ("from ..nn.layers import mp_sum\n", {"edm2lib.nn.layers"}),
        ("import edm2lib.files as f\nimport numpy\n", {"edm2lib.files"}),
    ],
)
def test_the_walker_sees_every_import_form(source, expected):
    probe = SRC / "edm2lib" / "sampling" / "_probe.py"  # never read: the source is given
    assert imports_of(probe, source) == expected
