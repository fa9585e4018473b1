"""The package's import graph, built from its own source: no cycles, stages that import only
downward, short functions, documented subpackages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "thor_planner"
#: A function's body (after its docstring) longer than this holds more than one idea: find the concept.
MAX_BODY_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``path`` imports anywhere (module level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ..b import c\n    from . import d\n")
    known = {"p.b", "p.b.c", "p.q.d", "p.q"}
    assert imports_of("p.q.m", src, known) == {"p.b", "p.b.c", "p.q", "p.q.d"}


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 30
    assert find_cycle(graph) is None


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body after its docstring (the signature and docstring do not count)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1 if body else 0


def test_body_lines_skip_the_docstring() -> None:
    tree = ast.parse('def f(\n    a,\n):\n    """doc\n    more"""\n    x = 1\n    return x\n')
    assert body_lines(tree.body[0]) == 2


def test_no_function_over_the_size_limit() -> None:
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > MAX_BODY_LINES:
                long[f"{name}.{node.name}"] = body_lines(node)
    assert long == {}


@pytest.mark.parametrize("name", sorted(n for n, p in modules().items() if p.name == "__init__.py"))
def test_every_subpackage_says_what_it_owns(name: str) -> None:
    doc = " ".join((ast.get_docstring(ast.parse(modules()[name].read_text())) or "").split())
    assert doc, f"{name} has no docstring"
    if name != "thor_planner":
        assert "must not import" in doc.lower() or "nothing in the package imports it" in doc.lower()


def test_stages_import_only_downward() -> None:
    """The data flow as a rank: a module may import only modules of its own or a lower rank."""
    rank = {"utils": 0, "version": 0, "inputs": 1, "capture": 2, "partition": 2, "targets": 2, "infoloss": 3,
            "gradient_loss": 3,
            "inversion": 3, "timing": 4, "planning": 5, "report": 6, "optim": 6, "distributed": 7,
            "profiling": 7, "training": 8, "tune": 9, "cli": 10}
    bad = []
    for name, targets in import_graph().items():
        if name == "thor_planner":
            continue
        stage = name.split(".")[1]
        for t in targets:
            other = t.split(".")[1] if "." in t else None
            if other and rank[other] > rank[stage]:
                bad.append(f"{name} -> {t}")
    assert bad == []
