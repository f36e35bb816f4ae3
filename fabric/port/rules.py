"""The shared pieces of every rule: what a call resolves to, where it is, and what was found.

A rule is a small object with optional hooks (``call``, ``statement``, ``with_``, ``if_``) that the
single transformer in ``convert.py`` calls on every node of one kind. Each hook gets the original
node (for names and line numbers, which are computed on the unchanged tree) and the updated node (to
build the replacement from), and returns a replacement or ``None`` to leave the node to the next rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import libcst as cst
from libcst.metadata import ParentNodeProvider, PositionProvider, QualifiedNameProvider, ScopeProvider

from fabric.port.report import Finding

#: the name the converted script gives its Fabric object
FABRIC = "fabric"


@dataclass
class Context:
    """State shared by the rules of one conversion."""

    metadata: Any  # the MetadataWrapper's resolved metadata
    module: cst.Module
    findings: list[Finding] = field(default_factory=list)
    #: the script uses the ``fabric`` object somewhere (so it must be created)
    uses_fabric: bool = False
    #: ``fabric`` is used by code that runs at import time, outside the ``__main__`` block
    used_at_module_level: bool = False
    #: the script starts processes under torchrun (process group or DDP seen)
    distributed: bool = False
    #: a proven precision setting for ``Fabric(precision=...)``
    precision: str | None = None
    #: a module-level on/off switch of that precision (``use_amp``): off means ``"32-true"``
    precision_flag: str | None = None
    #: a proven ``mp.spawn`` entry point (``fabric.port.spawn.SpawnPlan``), converted in place
    spawn: Any = None
    #: why the script's spawn entry point was not proven ("" when there is none or it was)
    spawn_refused: str = ""
    #: set by the dispatcher: whether the node being visited runs at import time
    at_module_level: bool = True

    def qualified(self, node: cst.CSTNode) -> set[str]:
        """The fully qualified names ``node`` refers to through the script's imports."""
        try:
            names = _value(self.metadata[QualifiedNameProvider][node])
        except KeyError:
            return set()
        return {name.name for name in names}

    def is_(self, node: cst.CSTNode, *names: str) -> bool:
        return bool(self.qualified(node) & set(names))

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        try:
            return _value(self.metadata[ParentNodeProvider][node])
        except KeyError:
            return None

    def scope(self, node: cst.CSTNode) -> Any:
        """The libcst scope ``node`` is in (its ``assignments`` and ``accesses``), or None."""
        try:
            return _value(self.metadata[ScopeProvider][node])
        except KeyError:
            return None

    def accesses(self, name: cst.Name) -> list[cst.CSTNode] | None:
        """Every read of the variable that ``name`` assigns, or None when its scope is unknown."""
        try:
            scope = _value(self.metadata[ScopeProvider][name])
        except KeyError:
            return None
        if scope is None:
            return None
        return [access.node for access in scope.accesses[name.value]]

    def line(self, node: cst.CSTNode) -> int:
        # a statement's position starts at the comment lines above it; report the code's own line
        if isinstance(node, cst.SimpleStatementLine) and node.body:
            node = node.body[0]
        elif isinstance(node, cst.With) and node.items:
            node = node.items[0]
        elif isinstance(node, cst.If):
            node = node.test
        try:
            return _value(self.metadata[PositionProvider][node]).start.line
        except KeyError:
            return 0

    def code(self, node: cst.CSTNode) -> str:
        lines = self.module.code_for_node(node).strip().splitlines()
        text = [line for line in lines if not line.lstrip().startswith("#")]
        return text[0] + (" ..." if len(text) > 1 else "") if text else ""

    def left(self, node: cst.CSTNode, reason: str, fix: str) -> None:
        self.findings.append(Finding(self.line(node), self.code(node), reason, fix, converted=False))

    def done(self, node: cst.CSTNode, reason: str, note: str = "") -> None:
        self.findings.append(Finding(self.line(node), self.code(node), reason, note, converted=True))

    def fabric(self, *attrs: str) -> cst.BaseExpression:
        """``fabric.attr...``, and remember that the script now needs its Fabric object."""
        self.uses_fabric = True
        self.used_at_module_level |= self.at_module_level
        expr: cst.BaseExpression = cst.Name(FABRIC)
        for attr in attrs:
            expr = cst.Attribute(value=expr, attr=cst.Name(attr))
        return expr


class Rule:
    """Base of the rules; every hook returns ``None`` (no change) unless a subclass rewrites."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def analyze(self, module: cst.Module) -> None:
        """A first look at the whole (unchanged) script, before any hook runs."""

    def call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression | None:
        return None

    def statement(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement] | cst.RemovalSentinel | None:
        return None

    def with_(self, original: cst.With, updated: cst.With) -> cst.BaseStatement | None:
        return None

    def if_(self, original: cst.If, updated: cst.If) -> cst.BaseStatement | None:
        return None

    def comparison(self, original: cst.Comparison, updated: cst.Comparison) -> cst.BaseExpression | None:
        return None


# ------------------------------------------------------------------------------------------ helpers
def _value(value: Any) -> Any:
    """Metadata as computed: libcst may hand out a lazily computed value (a callable) instead."""
    return value() if callable(value) else value


def only_call(statement: cst.SimpleStatementLine) -> cst.Call | None:
    """The call of a statement that is just ``f(...)``, else ``None``."""
    if len(statement.body) == 1 and isinstance(statement.body[0], cst.Expr):
        value = statement.body[0].value
        if isinstance(value, cst.Call):
            return value
    return None


def kwargs(call: cst.Call) -> dict[str, cst.Arg]:
    return {arg.keyword.value: arg for arg in call.args if arg.keyword is not None}


def positional(call: cst.Call) -> list[cst.Arg]:
    return [arg for arg in call.args if arg.keyword is None and not arg.star]


def removed(original: cst.SimpleStatementLine) -> cst.BaseStatement | cst.RemovalSentinel:
    """Remove a statement; keep its comment lines (as a ``pass``) so no comment is lost."""
    if any(line.comment is not None for line in original.leading_lines) or _trailing_comment(original):
        return cst.SimpleStatementLine(
            body=[cst.Pass()],
            leading_lines=original.leading_lines,
            trailing_whitespace=original.trailing_whitespace,
        )
    return cst.RemoveFromParent()


def _trailing_comment(statement: cst.SimpleStatementLine) -> bool:
    return statement.trailing_whitespace.comment is not None


def string_value(node: cst.BaseExpression) -> str | None:
    if isinstance(node, cst.SimpleString):
        value = node.evaluated_value
        return value if isinstance(value, str) else None
    return None


def all_nodes(node: cst.CSTNode) -> Iterable[cst.CSTNode]:
    yield node
    for child in node.children:
        yield from all_nodes(child)
