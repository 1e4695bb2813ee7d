"""The layout rules of the package (README, "How the code is laid out"): wings stacked in floors, imports that only
go down a floor or stay on it, no import circles, and small modules. Read from the source with `ast`: nothing is
imported, so the rules hold for code paths the other tests never run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "textinv"

# Floors, bottom first. A module belongs to the floor of the longest prefix that names it.
FLOORS = [
    ("shared", ["textinv", "textinv.errors", "textinv.reporting", "textinv.atomic", "textinv.safe_pickle",
                "textinv.hub", "textinv.hashing", "textinv.pictures", "textinv.strict_yaml",
                # the toy world and its judge are data and rules, not the product: evaluation reads the judge
                "textinv.toy.world", "textinv.toy.judge", "textinv.toy.tokenizer", "textinv.toy.pipeline"]),
    ("formats", ["textinv.formats"]),
    ("concepts", ["textinv.concepts"]),
    ("models", ["textinv.models"]),
    ("config", ["textinv.config", "textinv.paper_config"]),
    ("runs", ["textinv.runs"]),
    ("generation", ["textinv.generation"]),
    ("evaluation", ["textinv.evaluation"]),
    ("training", ["textinv.training"]),
    ("toy apps", ["textinv.toy"]),
    ("command line", ["textinv.progress", "textinv.cli", "textinv.__main__"]),
]
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The textinv modules `name` imports, anywhere in its body (a function's local import counts too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:  # `from textinv.toy import world` imports textinv.toy.world
                if f"{base}.{alias.name}" in MODULES:
                    out.add(f"{base}.{alias.name}")
                elif base in MODULES:
                    out.add(base)
    out.discard(name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def floor_of(module: str) -> int:
    best = (-1, -1)
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best[1]:
                best = (i, len(p))
    assert best[0] >= 0, f"{module} is on no floor; add it to FLOORS"
    return best[0]


def test_every_module_is_on_a_floor():
    for name in MODULES:
        floor_of(name)


def test_imports_never_climb_a_floor():
    upward = [f"{a} ({FLOORS[floor_of(a)][0]}) -> {b} ({FLOORS[floor_of(b)][0]})"
              for a, targets in GRAPH.items() for b in targets if floor_of(b) > floor_of(a)]
    assert upward == []


def test_no_import_circles():
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"textinv.cli"}))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_LINES})"


def test_the_structure_checker_sees_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The walker itself: a made-up pair of modules that import each other, one of them from a floor below."""
    low, high = tmp_path / "low.py", tmp_path / "high.py"
    low.write_text("from textinv.training import loop\n")
    high.write_text("import textinv.errors\n")
    monkeypatch.setitem(MODULES, "textinv.training.loop", high)
    monkeypatch.setitem(MODULES, "textinv.errors", low)
    assert _imports("textinv.errors", low) == {"textinv.training.loop"}
    assert floor_of("textinv.errors") < floor_of("textinv.training.loop")
