"""The layers point down only: facade -> connector -> parts -> checkpoint -> utilities.

Checked on the source, statically: an import that crosses a floor upwards is a loop waiting to happen
(a part that imports the facade's wrappers, a checkpoint format that imports a strategy). Beyond the
floors, no two modules of fabric import each other by any path, counting imports inside functions and
under ``TYPE_CHECKING`` too: a cycle hidden in a function still ties the two modules' designs together.
And no file but the facade (whose docstrings are the API reference) grows past 600 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fabric"

# For each floor, the fabric modules it must never import (directly or inside a function).
FORBIDDEN = {
    "checkpoint": (
        "fabric.fabric",
        "fabric.wrappers",
        "fabric.loader_wrapper",
        "fabric.connector",
        "fabric.strategies",
        "fabric.launchers",
    ),
    "strategies": ("fabric.fabric", "fabric.wrappers", "fabric.loader_wrapper", "fabric.connector"),
    "launchers": ("fabric.fabric", "fabric.wrappers", "fabric.loader_wrapper", "fabric.connector"),
    "utilities": (
        "fabric.fabric",
        "fabric.wrappers",
        "fabric.loader_wrapper",
        "fabric.connector",
        "fabric.strategies",
        "fabric.checkpoint",
    ),
}


def _imports(path: Path) -> set[str]:
    """Modules imported at run time (imports under ``if TYPE_CHECKING:`` only name types, and are skipped)."""
    names: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        pending.extend(ast.iter_child_nodes(node))
    return names


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_no_import_points_up(floor: str) -> None:
    offending = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in sorted((PACKAGE / floor).rglob("*.py"))
        for name in sorted(_imports(path))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[floor])
    ]
    assert not offending, offending


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _enclosing(name: str) -> str | None:
    """The fabric module that ``name`` (a module, or a module's attribute) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _all_fabric_imports(module: str) -> set[str]:
    """Every fabric module ``module`` imports anywhere: top level, inside functions, under TYPE_CHECKING.

    ``from fabric.a import b`` counts as importing ``fabric.a.b`` when that is a module, else ``fabric.a``.
    The parent packages Python initializes on the way are not counted (every module would then import
    ``fabric/__init__.py``, which imports the whole public surface).
    """
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
            ]
        else:
            continue
        found.update(t for t in map(_enclosing, targets) if t is not None and t != module)
    return found


def _cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield sorted(component)


def test_cycle_finder_finds_a_cycle_through_a_function_level_import() -> None:
    """The checker itself: a cycle of three, one edge of which only exists inside a function."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert list(_cycles(graph)) == [["a", "b", "c"]]
    assert list(_cycles({"a": {"b"}, "b": set()})) == []
    assert "fabric.checkpoint.io" in _all_fabric_imports("fabric.checkpoint.pipeline")


def test_no_import_cycle_of_any_kind() -> None:
    graph = {module: _all_fabric_imports(module) for module in MODULES}
    cycles = [
        " -> ".join(component)
        + "   ("
        + "; ".join(f"{m} imports {sorted(graph[m] & set(component))}" for m in component)
        + ")"
        for component in _cycles(graph)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_file_over_600_lines_but_the_facade() -> None:
    """Split a file by job before it passes 600 lines (``fabric/fabric.py`` holds the API reference)."""
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "fabric.py" or path.parent != PACKAGE
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not long, long


#: packages a function may import without saying why: extras that `import fabric` must never load
OPTIONAL_ENGINES = (
    "deepspeed",
    "torch_xla",
    "torch.utils.tensorboard",
    "tensorboard",
    "tensorboardX",
    "transformers",
)
OPTIONAL_ENGINES += ("libcst", "mpi4py", "fsspec")


def _unexplained_function_imports(path: Path) -> list[str]:
    """Imports inside a function with no comment on their line or on the lines just above them.

    An import belongs at the top of its module unless it keeps something out of ``import fabric`` (an
    optional engine, a heavy module such as ``torch.distributed.checkpoint``, a part only one strategy
    needs) or is a lazy attribute of a module's ``__getattr__``; the comment says which. A group of
    imports one after the other shares the comment above the first.
    """
    lines = path.read_text().splitlines()
    found: list[str] = []
    for function in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if isinstance(node, ast.ImportFrom) and node.level:
                name = "fabric"  # a relative import: one of ours
            if any(name == e or name.startswith(e + ".") for e in OPTIONAL_ENGINES):
                continue
            row = node.lineno - 1
            while (
                row > 0 and lines[row - 1].strip().startswith(("import ", "from ")) and "#" not in lines[row]
            ):
                row -= 1  # the first import of the group
            explained = "#" in lines[node.end_lineno - 1] or "#" in lines[row]
            if explained or lines[row - 1].strip().startswith("#"):
                continue
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name} inside a function")
    return found


def test_imports_inside_functions_say_why() -> None:
    unexplained = [
        line for path in sorted(PACKAGE.rglob("*.py")) for line in _unexplained_function_imports(path)
    ]
    assert not unexplained, "\n".join(unexplained)
