"""Where the Fabric object comes to exist: the import and ``fabric = Fabric(...)``; ``fabric.launch()``.

The object is a module-level name, so every function of the script (``train``, an optimizer closure)
sees it without new parameters. It is created at the top of the ``if __name__ == "__main__":`` block,
before the script's own code runs; a script without that block, or one that uses ``fabric`` in code
that runs at import, gets it right after its imports. A script that starts no processes itself gets
``devices=1``: Fabric's ``"auto"`` would take every GPU, which the original did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import libcst as cst

from fabric.port.rules import FABRIC, Context, all_nodes, only_call


def is_main_guard(node: cst.CSTNode) -> bool:
    if not isinstance(node, cst.If) or not isinstance(node.test, cst.Comparison):
        return False
    test = node.test
    sides = [test.left, *(c.comparator for c in test.comparisons)]
    names = [s.value for s in sides if isinstance(s, cst.Name)]
    strings = [s.evaluated_value for s in sides if isinstance(s, cst.SimpleString)]
    return len(test.comparisons) == 1 and names == ["__name__"] and strings == ["__main__"]


def is_script(module: cst.Module) -> bool:
    """Whether the file runs something: a ``__main__`` block, or top-level loops, ``with`` blocks or calls.

    A file of only imports, classes and functions is a library module of a larger program: creating a
    Fabric object at its import would launch a second time, so such a file is not converted.
    """
    for statement in module.body:
        if is_main_guard(statement) or isinstance(statement, (cst.For, cst.While, cst.With)):
            return True
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Expr) and isinstance(small.value, cst.Call):
                    return True
    return False


def has_fabric(ctx: Context, module: cst.Module) -> bool:
    """Whether the script already creates a Fabric object (then nothing is added: idempotence)."""
    return any(
        isinstance(n, cst.Call)
        and ctx.is_(n.func, "fabric.Fabric", "fabric.fabric.Fabric", "lightning.fabric.Fabric")
        for n in all_nodes(module)
    )


def _statement(code: str) -> cst.SimpleStatementLine:
    parsed = cst.parse_statement(code)
    assert isinstance(parsed, cst.SimpleStatementLine)
    return parsed


def creation_args(ctx: Context) -> list[str]:
    """The ``Fabric(...)`` arguments every creation carries: the proven precision."""
    if ctx.precision and ctx.precision_flag:
        return [f'precision="{ctx.precision}" if {ctx.precision_flag} else "32-true"']
    if ctx.precision:
        return [f'precision="{ctx.precision}"']
    return []


def _creation(ctx: Context) -> list[cst.SimpleStatementLine]:
    args = []
    if ctx.distributed:
        # the processes torchrun (or `fabric run`) started on this node and the node count; one process
        # under plain `python`, as the original. Fabric's "auto" would take every GPU instead.
        # "ddp" even on one process: the script's own torch.distributed calls (a DistributedSampler,
        # a collective) need the process group that init_process_group made there before
        args.append('strategy="ddp"')
        args.append('devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1))')
        args.append('num_nodes=int(os.environ.get("GROUP_WORLD_SIZE", 1))')
    else:
        args.append("devices=1")
    args += creation_args(ctx)
    return [
        _statement(f"{FABRIC} = Fabric({', '.join(args)})  # added by `fabric port`\n"),
        _statement(f"{FABRIC}.launch()\n"),
    ]


def is_import(statement: cst.CSTNode) -> bool:
    """Whether a top-level statement only imports."""
    return isinstance(statement, cst.SimpleStatementLine) and all(
        isinstance(s, (cst.Import, cst.ImportFrom)) for s in statement.body
    )


def _imports_os(module: cst.Module) -> bool:
    return any(
        isinstance(s, cst.Import)
        and any(a.asname is None and isinstance(a.name, cst.Name) and a.name.value == "os" for a in s.names)
        for statement in module.body
        if is_import(statement)
        for s in statement.body  # type: ignore[union-attr]
    )


def add_fabric(ctx: Context, module: cst.Module, imports_fabric: bool, create: bool = True) -> cst.Module:
    """Insert the import and (unless a converted spawn made it already) the creation of the Fabric object."""
    body = list(module.body)
    last_import = max((i for i, s in enumerate(body) if is_import(s)), default=-1)
    creation = _creation(ctx) if create else []
    guard = next((i for i, s in enumerate(body) if is_main_guard(s)), None)
    if guard is not None and not ctx.used_at_module_level:
        block = body[guard]
        assert isinstance(block, cst.If) and isinstance(block.body, cst.IndentedBlock)
        body[guard] = block.with_changes(body=block.body.with_changes(body=[*creation, *block.body.body]))
        creation = []
    imports = [] if imports_fabric else [_statement("from fabric import Fabric\n")]
    if ctx.distributed and create and not _imports_os(module):
        imports.insert(0, _statement("import os\n"))
    body[last_import + 1 : last_import + 1] = [*imports, *creation]
    return module.with_changes(body=body)


@dataclass(frozen=True)
class Threaded:
    """A module of the same program whose functions use the script's Fabric object (``fabric.port.package``)."""

    module: str  #: its dotted import name, as the script's directory on ``sys.path`` resolves it
    alias: str  #: the name the script imports it as, free in the script


def threading_line(threaded: Threaded) -> str:
    return f"{threaded.alias}.{FABRIC} = {FABRIC}"


class _AfterLaunch(cst.CSTTransformer):
    """Put ``alias.fabric = fabric`` right after each ``fabric.launch()`` (the object exists from there on)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def leave_SimpleStatementLine(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement]:
        call = only_call(updated)
        func = call.func if call is not None else None
        if not (
            isinstance(func, cst.Attribute)
            and isinstance(func.value, cst.Name)
            and func.value.value == FABRIC
            and func.attr.value == "launch"
            and not call.args  # type: ignore[union-attr]
        ):
            return updated
        return cst.FlattenSentinel([updated, *(_statement(line + "\n") for line in self.lines)])


def thread(module: cst.Module, threaded: Sequence[Threaded]) -> cst.Module:
    """Import each module of ``threaded`` and hand it the Fabric object after ``fabric.launch()``.

    A module attribute set once, before any of the module's functions run, rather than a new
    parameter threaded through every call: the rules write ``fabric.x`` in every file alike, and the
    user's signatures stay as they were. A script without a plain ``fabric.launch()`` is left as it is
    (the caller checks the result for the lines and leaves the modules whole then).
    """
    if not threaded:
        return module
    lines = [f"{threading_line(t)}  # added by `fabric port`: {t.module} uses it" for t in threaded]
    module = module.visit(_AfterLaunch(lines))
    body = list(module.body)
    last_import = max((i for i, s in enumerate(body) if is_import(s)), default=-1)
    imports = [_statement(f"import {t.module} as {t.alias}  # added by `fabric port`\n") for t in threaded]
    body[last_import + 1 : last_import + 1] = imports
    return module.with_changes(body=body)
