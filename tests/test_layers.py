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
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
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
