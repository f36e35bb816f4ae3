"""One pass over the script: a transformer that hands each node to the rules, then the entry point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import libcst as cst
from libcst.metadata import (
    MetadataWrapper,
    ParentNodeProvider,
    PositionProvider,
    QualifiedNameProvider,
    ScopeProvider,
)

from fabric.port.amp import AmpRule
from fabric.port.backward import BackwardRule
from fabric.port.checkpoint import CheckpointRule
from fabric.port.collectives import CollectiveRule
from fabric.port.device import DeviceRule
from fabric.port.entry import Threaded, add_fabric, has_fabric, is_main_guard, is_script, thread
from fabric.port.processes import ProcessRule
from fabric.port.report import Finding, Report
from fabric.port.rules import Context, Rule, all_nodes
from fabric.port.seed import SeedRule
from fabric.port.spawn import GlobalFabric, SpawnPlan, plan, spawn_calls

_METADATA = (QualifiedNameProvider, PositionProvider, ScopeProvider, ParentNodeProvider)


class _Porter(cst.CSTTransformer):
    def __init__(self, ctx: Context, rules: list[Rule]) -> None:
        super().__init__()
        self.ctx = ctx
        self.rules = rules
        self.depth = 0  # functions, classes and lambdas around the node
        self.main_guard = 0

    def _update_level(self) -> None:
        self.ctx.at_module_level = self.depth == 0 and self.main_guard == 0

    def _scope_in(self) -> None:
        self.depth += 1
        self._update_level()

    def _scope_out(self) -> None:
        self.depth -= 1
        self._update_level()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._scope_in()

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        self._scope_out()
        return updated

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._scope_in()

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self._scope_out()
        return updated

    def visit_Lambda(self, node: cst.Lambda) -> None:
        self._scope_in()

    def leave_Lambda(self, original: cst.Lambda, updated: cst.Lambda) -> cst.Lambda:
        self._scope_out()
        return updated

    def visit_If(self, node: cst.If) -> None:
        if is_main_guard(node):
            self.main_guard += 1
            self._update_level()

    def _first(self, hook: str, original: Any, updated: Any) -> Any:
        for rule in self.rules:
            result = getattr(rule, hook)(original, updated)
            if result is not None:
                return result
        return updated

    def leave_If(self, original: cst.If, updated: cst.If) -> Any:
        result = self._first("if_", original, updated)
        if is_main_guard(original):
            self.main_guard -= 1
            self._update_level()
        return result

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> Any:
        return self._first("call", original, updated)

    def leave_SimpleStatementLine(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> Any:
        return self._first("statement", original, updated)

    def leave_With(self, original: cst.With, updated: cst.With) -> Any:
        return self._first("with_", original, updated)

    def leave_Comparison(self, original: cst.Comparison, updated: cst.Comparison) -> Any:
        return self._first("comparison", original, updated)


_RULES: tuple[type[Rule], ...] = (
    ProcessRule,
    DeviceRule,
    AmpRule,
    CheckpointRule,  # before CollectiveRule: it replaces a rank-0 check that holds only a save
    CollectiveRule,
    BackwardRule,
    SeedRule,
)


@dataclass
class Pass:
    """One file after the rules ran: its tree before and after, and what the rules found."""

    source: str
    ctx: Context
    module: cst.Module
    converted: cst.Module
    spawn: SpawnPlan | str | None


def run_rules(source: str, distributed: bool = False) -> Pass:
    """Parse ``source`` and run every rule over it; nothing is decided about the Fabric object yet.

    ``distributed`` says that the program this file belongs to starts processes (another of its files
    does), which the rules must know even when this file shows no sign of it (the GradScaler rule).
    """
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as err:
        raise SyntaxError(f"fabric port: the script does not parse: {err}") from err
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    ctx = Context(metadata=wrapper.resolve_many(_METADATA), module=module, distributed=distributed)
    spawn = plan(ctx, module) if spawn_calls(ctx, module) else None
    if isinstance(spawn, SpawnPlan):
        ctx.spawn = spawn
    elif spawn:
        ctx.spawn_refused = spawn
    rules = [rule(ctx) for rule in _RULES]
    for rule in rules:
        rule.analyze(module)
    # the MetadataWrapper resolved metadata on `module` itself, so the visit can read it
    converted = module.visit(_Porter(ctx, rules))
    return Pass(source, ctx, module, converted, spawn)


def convert_source(source: str) -> tuple[str, Report]:
    """See :func:`fabric.port.convert`."""
    return finish(run_rules(source))


def finish(done: Pass, threaded: Sequence[Threaded] = ()) -> tuple[str, Report]:
    """The converted code of a script (or of a file left whole) and its report.

    ``threaded`` names the modules of the same program whose functions use this script's Fabric
    object (``fabric.port.package``): the script then needs the object even if it uses none itself,
    and sets ``module.fabric`` right after ``fabric.launch()``.
    """
    source, ctx, module, converted, spawn = done.source, done.ctx, done.module, done.converted, done.spawn
    if threaded:
        ctx.uses_fabric = True
    if isinstance(spawn, str):
        # The workers import this file without its __main__ block: a converted script would have no
        # Fabric object there. Nothing is changed; everything the rules saw becomes a manual step.
        return source, unchanged(ctx, f"spawn entry point: {spawn}", "")
    if ctx.spawn is not None:
        imports_fabric = any(ctx.is_(n, "fabric.Fabric") for n in _names(module))
        converted = add_fabric(ctx, converted, imports_fabric, create=False)
        if ctx.spawn.enclosing:
            converted = converted.visit(GlobalFabric(ctx.spawn.enclosing))
        return _code(thread(converted, threaded)), Report(ctx.findings)
    if ctx.uses_fabric and not has_fabric(ctx, module) and not is_script(module):
        return source, unchanged(
            ctx,
            "a module without an entry point",
            "this file only defines functions and classes: convert it together with the script that imports "
            "it (`fabric port SCRIPT THIS_FILE -o OUTDIR`), or give its functions that script's Fabric object "
            "and make these changes",
        )
    guarded = any(is_main_guard(s) for s in module.body) and not ctx.used_at_module_level
    if ctx.precision_flag and ctx.uses_fabric and not has_fabric(ctx, module) and not guarded:
        return source, unchanged(
            ctx,
            f"the precision switch {ctx.precision_flag!r} is not yet set where the Fabric object is created",
            f"create `fabric = Fabric(precision='{ctx.precision}' if {ctx.precision_flag} else '32-true')` "
            f"after `{ctx.precision_flag}` is set, before the first use of `fabric`, and make these changes",
        )
    if ctx.uses_fabric and not has_fabric(ctx, module):
        imports_fabric = any(ctx.is_(n, "fabric.Fabric") for n in _names(module))
        converted = add_fabric(ctx, converted, imports_fabric)
    return _code(thread(converted, threaded)), Report(ctx.findings)


def _code(converted: cst.Module) -> str:
    code = converted.code
    compile(code, "<fabric port>", "exec")  # the output always parses; a failure here is our bug
    return code


def _names(module: cst.Module) -> list[cst.CSTNode]:
    return [n for n in all_nodes(module) if isinstance(n, cst.Name)]


def unchanged(ctx: Context, why: str, fix: str) -> Report:
    """The report of a file left whole: what the rules would have rewritten becomes a manual step."""
    return Report(
        [
            f
            if not f.converted
            else Finding(f.line, f.code, f"not converted ({why}): {f.reason}", fix or f.fix, converted=False)
            for f in ctx.findings
        ]
    )
