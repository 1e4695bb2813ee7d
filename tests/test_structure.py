"""The layout rules of the package (README, "How the code is laid out"): wings stacked in floors, imports that only
go down a floor or stay on it, no import circles, and small modules. Read from the source with `ast`: nothing is
imported, so the rules hold for code paths the other tests never run."""

from __future__ import annotations

import ast
import re
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
    ("config", ["textinv.config", "textinv.paper_config", "textinv.config_bounds"]),
    ("runs", ["textinv.runs"]),
    ("generation", ["textinv.generation"]),
    ("evaluation", ["textinv.evaluation"]),
    ("training", ["textinv.training"]),
    ("toy apps", ["textinv.toy"]),
    ("command line", ["textinv.progress", "textinv.cli_output", "textinv.cli", "textinv.__main__", "textinv.cli_setup",
                      "textinv.cli_help"]),
]
MAX_LINES = 500
MAX_CLI_LINES = 700  # cli.py: the options of every command, and nothing else
MAX_COMMAND_BODY = 30  # a command is options -> checks -> one library call -> printing
# commands whose bodies another part of issue 20 (the run folder) reshapes


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


def test_cli_stays_under_its_size():
    lines = len(MODULES["textinv.cli"].read_text().splitlines())
    assert lines < MAX_CLI_LINES, f"textinv/cli.py has {lines} lines (fewer than {MAX_CLI_LINES})"


def command_bodies(source: str) -> dict[str, int]:
    """Lines of each `@app.command` function's body in `source`, its docstring left out."""
    bodies = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef) or not any(
            isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
            for d in node.decorator_list
        ):
            continue
        body = node.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        bodies[node.name] = body[-1].end_lineno - body[0].lineno + 1 if body else 0
    return bodies


def test_cli_commands_are_thin():
    bodies = command_bodies(MODULES["textinv.cli"].read_text())
    assert {"inspect", "convert", "merge", "fetch", "generate", "img2img", "train", "demo", "eval_", "report"} <= set(bodies)
    long = {name: n for name, n in bodies.items() if n > MAX_COMMAND_BODY}
    assert long == {}, f"command bodies over {MAX_COMMAND_BODY} lines (move the rules into the library)"


def test_the_command_measure_counts_the_body_and_not_the_docstring():
    lines = "\n".join(f"    x{i} = {i}" for i in range(31))
    source = (f'@app.command()\ndef long():\n    """Doc\n\n    more doc."""\n{lines}\n\n'
              f'@app.command(name="s")\ndef short(\n    a: int = 1,\n) -> None:\n    """Doc."""\n    return\n\n'
              f"def helper():\n{lines}\n")
    assert command_bodies(source) == {"long": 31, "short": 1}


def test_the_structure_checker_sees_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The walker itself: a made-up pair of modules that import each other, one of them from a floor below."""
    low, high = tmp_path / "low.py", tmp_path / "high.py"
    low.write_text("from textinv.training import loop\n")
    high.write_text("import textinv.errors\n")
    monkeypatch.setitem(MODULES, "textinv.training.loop", high)
    monkeypatch.setitem(MODULES, "textinv.errors", low)
    assert _imports("textinv.errors", low) == {"textinv.training.loop"}
    assert floor_of("textinv.errors") < floor_of("textinv.training.loop")


# --- the run folder has one owner, and the loop reads in one sitting (issue 20) -----------------------------------

TRAIN_MAX_LINES = 80
# The run folder's file names, each spelled in one module only (textinv.runs): the literal, a path ending in it,
# or, for the patterns, an f-string that writes the name or a regex that parses it.
SHARED_NAMES = {  # name -> (the module that owns it, does a string spell it?)
    "config.yaml": ("textinv.runs.folder", lambda s: s == "config.yaml" or s.endswith("/config.yaml")),
    "loss.csv": ("textinv.runs.folder", lambda s: s == "loss.csv" or s.endswith("/loss.csv")),
    "validation.csv": ("textinv.runs.folder", lambda s: s == "validation.csv" or s.endswith("/validation.csv")),
    "eval.json": ("textinv.runs.folder", lambda s: s == "eval.json" or s.endswith("/eval.json")),
    "state.json": ("textinv.runs.states", lambda s: s == "state.json" or s.endswith("/state.json")),
    "checkpoint <name>-<step>.pt": ("textinv.runs.folder", lambda s: s == "{}-{}.pt" or s.endswith("/{}-{}.pt")
                                    or re.search(r"\(\?P<name>.*\)-\(\?P<step>", s) is not None),
    "image log <key>_gs-<step>.png": ("textinv.runs.folder", lambda s: "_gs-" in s),
}


def _strings(tree: ast.AST) -> list[str]:
    """Every string a module spells outside its docstrings: constants as they are, f-strings as templates with `{}`
    for each replacement field."""
    docstrings, in_templates, out = set(), set(), []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
        if isinstance(node, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
            in_templates |= {id(v) for v in node.values}
    out += [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings | in_templates]
    return out


def modules_spelling(spells) -> list[str]:
    """The modules with a string (docstrings aside) that `spells` recognises."""
    return sorted(name for name, path in MODULES.items()
                  if any(spells(s) for s in _strings(ast.parse(path.read_text()))))


def function_lines(path: Path, name: str) -> int:
    (node,) = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef) and n.name == name]
    return node.end_lineno - node.lineno + 1


def test_the_training_loop_fits_on_a_screen():
    lines = function_lines(MODULES["textinv.training.loop"], "train")
    assert lines <= TRAIN_MAX_LINES, f"train() has {lines} lines (at most {TRAIN_MAX_LINES})"


@pytest.mark.parametrize("shared", sorted(SHARED_NAMES))
def test_each_run_file_name_is_spelled_in_one_module(shared):
    owner, spells = SHARED_NAMES[shared]
    assert modules_spelling(spells) == [owner]


def test_the_structure_checker_sees_a_second_spelling_and_a_long_loop(tmp_path, monkeypatch):
    """The name and length checks themselves: a made-up module that spells the names again (docstrings aside)
    and whose train() is one line too long."""
    other = tmp_path / "other.py"
    other.write_text('"""Reads config.yaml and eval.json."""\n\n'
                     'def train(run, name, step):\n'
                     '    """Writes loss.csv."""\n'
                     '    path = run / "config.yaml"\n'
                     '    ckpt = f"{run}/{name}-{step}.pt"\n'
                     + "    x = 1\n" * (TRAIN_MAX_LINES - 4)
                     + '    return f"{step}_gs-{step:06d}.png", path, ckpt\n')
    monkeypatch.setitem(MODULES, "textinv.other", other)
    assert modules_spelling(SHARED_NAMES["config.yaml"][1]) == ["textinv.other", "textinv.runs.folder"]
    assert "textinv.other" in modules_spelling(SHARED_NAMES["checkpoint <name>-<step>.pt"][1])
    assert "textinv.other" in modules_spelling(SHARED_NAMES["image log <key>_gs-<step>.png"][1])
    assert "textinv.other" not in modules_spelling(SHARED_NAMES["eval.json"][1])  # only its docstring says it
    assert "textinv.other" not in modules_spelling(SHARED_NAMES["loss.csv"][1])
    assert function_lines(other, "train") == TRAIN_MAX_LINES + 1
