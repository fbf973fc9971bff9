"""The package's modules import each other without cycles (a cycle makes import order matter)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "matrix_stack"


def imported_modules(path: Path) -> set[str]:
    """Return the matrix_stack modules a module imports, at top level or inside functions,
    leaving out what only type checking imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "matrix_stack":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("matrix_stack."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("matrix_stack."))
    return found - {path.stem}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """Return one import cycle as a list of modules (first = last), or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        stack.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                return stack[stack.index(other):] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def test_find_cycle_finds_one_and_only_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle() -> None:
    graph = {path.stem: imported_modules(path) for path in PACKAGE.glob("*.py")}
    assert find_cycle(graph) == []
