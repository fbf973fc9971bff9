"""The package's layers: modules import each other without cycles, and only downwards.

base <- synapse <- core <- features <- cli, with hooks (the maintainer scripts' entry) beside
the CLI: a module never imports from a layer above its own, and nothing on the maintainer
scripts' side (hooks, core.apply, core.render) imports the CLI.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "matrix_stack"
# Lowest first; a module may import its own layer and those below it.
LAYERS = ("base", "synapse", "core", "features", "cli")
ENTRY_POINTS = {"hooks": "cli"}  # top-level modules, and the layer they stand in
MAINTAINER_SIDE = {"hooks", "core.apply", "core.render"}


def module_name(path: Path) -> str:
    """Return the dotted name below matrix_stack: core.apply, features.element.install."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))
            if module_name(path)}


def imported_modules(path: Path, known: set[str]) -> set[str]:
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
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "matrix_stack" or node.module.startswith("matrix_stack.")):
            base = node.module.removeprefix("matrix_stack").lstrip(".")
            # "from matrix_stack.core import apply" imports the module core.apply.
            names = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
            names = [name if name in known else base for name in names]
        elif isinstance(node, ast.Import):
            names = [alias.name.removeprefix("matrix_stack.") for alias in node.names
                     if alias.name.startswith("matrix_stack.")]
        found.update(name for name in names if name in known)
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(path, set(found)) for name, path in found.items()}


def layer(module: str) -> int:
    top = module.split(".")[0]
    return LAYERS.index(ENTRY_POINTS.get(top, top)) if top in (*LAYERS, *ENTRY_POINTS) else -1


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


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Return every import from a layer into one above it, as 'a -> b'."""
    return [f"{module} -> {other}" for module, others in sorted(graph.items())
            for other in sorted(others) if layer(other) > layer(module)]


def test_find_cycle_finds_one_and_only_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_upward_finds_an_import_from_the_core_into_a_feature() -> None:
    assert upward({"core.apply": {"features.element.install", "base.files"},
                   "cli.users": {"core.stack"}}) == ["core.apply -> features.element.install"]


def test_the_imports_are_read_as_modules() -> None:
    found = graph()
    assert {"core.apply", "core.stack", "base.files"} <= found["hooks"]
    assert "features.element.install" in found["cli.element"]


def test_every_module_is_in_a_layer() -> None:
    assert [name for name in modules() if layer(name) < 0 and name not in ("", "__init__")] == []


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(graph()) == []


def test_no_layer_imports_one_above_it() -> None:
    assert upward(graph()) == []


def test_the_maintainer_scripts_side_never_imports_the_cli() -> None:
    found = graph()
    assert [f"{module} -> {other}" for module in sorted(MAINTAINER_SIDE)
            for other in sorted(found[module]) if other.startswith("cli")] == []


# --- what the package imports from outside the standard library is what debian/control names --

CONTROL = PACKAGE.parent / "debian" / "control"
# The Debian package of each module imported from outside the standard library.
DEBIAN_PACKAGES = {
    "bcrypt": "python3-bcrypt", "brotli": "python3-brotli", "debconf": "python3-debconf",
    "dns": "python3-dnspython", "jinja2": "python3-jinja2",
    "signedjson": "python3-signedjson", "unpaddedbase64": "python3-unpaddedbase64",
    "yaml": "python3-yaml",
}
# Named in DESIGN.md's dependency contract, imported by nothing today; and Debian's
# matrix-synapse's PostgreSQL driver (Synapse imports it: the database question's postgresql).
NOT_IMPORTED = {"python3-debian", "python3-psycopg2"}


def third_party_imports() -> set[str]:
    """Return the top-level names of every module imported from outside the standard library
    and matrix_stack, anywhere in the package (function-level imports included)."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"matrix_stack", "__future__"}


def control_python_packages() -> set[str]:
    """Return the python3-* packages matrix-stack Depends on or Recommends."""
    fields = re.findall(r"^(?:Depends|Recommends):((?:.*\n(?: .*\n)*))", CONTROL.read_text(),
                        re.MULTILINE)
    return {name for field in fields for name in re.findall(r"\b(python3-[a-z0-9.-]+)", field)}


def test_debian_control_names_exactly_the_python_packages_the_code_imports() -> None:
    imported = third_party_imports()
    assert imported <= DEBIAN_PACKAGES.keys(), f"no Debian package known for {imported}"
    assert control_python_packages() == {DEBIAN_PACKAGES[name] for name in imported} | \
        NOT_IMPORTED
