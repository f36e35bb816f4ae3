"""The layers point down only: facade -> connector -> parts -> checkpoint -> utilities.

Checked on the source, statically: an import that crosses a floor upwards is a loop waiting to happen
(a part that imports the facade's wrappers, a checkpoint format that imports a strategy).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fabric"

# For each floor, the fabric modules it must never import (directly or inside a function).
FORBIDDEN = {
    "checkpoint": (
        "fabric.fabric",
        "fabric.wrappers",
        "fabric.connector",
        "fabric.strategies",
        "fabric.launchers",
    ),
    "strategies": ("fabric.fabric", "fabric.wrappers", "fabric.connector"),
    "launchers": ("fabric.fabric", "fabric.wrappers", "fabric.connector"),
    "utilities": (
        "fabric.fabric",
        "fabric.wrappers",
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
