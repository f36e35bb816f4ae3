"""Promises the documentation makes that a reader checks first: options explained, links that resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Files whose command-line options a user reads with `--help`.
CLI_FILES = sorted([ROOT / "fabric" / "cli.py", *(ROOT / "examples").rglob("*.py")])


def _options_without_help(path: Path) -> list[str]:
    """The ``add_argument`` calls in ``path`` that pass no ``help=``, as ``file:line option``."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        is_option = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        )
        if is_option and not any(keyword.arg == "help" for keyword in node.keywords):
            name = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "?"
            missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return missing


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_line_option_has_help_text(path: Path) -> None:
    assert _options_without_help(path) == []


def test_readme_relative_links_exist() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert relative, "the README links no files; the pattern above no longer matches its links"
    missing = [t for t in relative if not (ROOT / t).exists()]
    assert missing == []


def test_readme_anchor_links_name_a_heading() -> None:
    text = (ROOT / "README.md").read_text()
    headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    anchors = re.findall(r"\]\(#([^)]+)\)", text)
    assert [a for a in anchors if a not in slugs] == []
