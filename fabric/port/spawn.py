"""``torch.multiprocessing.spawn`` entry points, converted only in the one shape whose numbers are provable.

The shape (the one in torch's own DDP tutorial)::

    def worker(rank, world_size, ...):
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        ...

    mp.spawn(worker, args=(world_size, ...), nprocs=world_size)

becomes::

    fabric = Fabric(strategy="ddp", devices=world_size)  # added by `fabric port`
    fabric.launch()
    worker(fabric.local_rank, world_size, ...)

and the worker's ``init_process_group`` is removed. Why ``"ddp"`` and not ``"ddp_spawn"``: spawned
workers import the script without running its ``__main__`` block, so they would have no ``fabric``
object, and the rest of the conversion (``fabric.setup_module``, ``fabric.backward`` in any function)
relies on it being the module-level name. The ``"ddp"`` launcher instead re-runs the user's command
for ranks 1..N-1, as torchrun would, so every process reaches this point, makes its own Fabric and
calls the worker with its own rank: the same processes, ranks and world size as ``mp.spawn``.
What the parent computed before the spawn, each process now computes itself; a script that draws
unseeded random data there gets different data per process (reported as a note).

Anything else (a rank computed from other values, an address of its own, ``join=False``, a worker
that is not a plain function of this file) is not proven: the whole file is then left as written.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from fabric.port.rules import FABRIC, Context, all_nodes, kwargs, only_call, positional

SPAWN = ("torch.multiprocessing.spawn", "torch.multiprocessing.spawn.spawn")
OTHER_STARTS = ("torch.multiprocessing.start_processes",)
INIT = ("torch.distributed.init_process_group", "torch.distributed.distributed_c10d.init_process_group")
_INIT_ARGS = {"backend", "rank", "world_size", "timeout", "init_method"}


@dataclass
class SpawnPlan:
    """A proven spawn entry point: what to write in place of the spawn statement."""

    statement: cst.SimpleStatementLine  # the original ``mp.spawn(...)`` statement
    worker: str
    args: list[cst.BaseExpression]
    nprocs: cst.BaseExpression
    enclosing: str | None  # the module-level function holding the spawn (needs ``global fabric``)
    inits: list[cst.SimpleStatementLine]  # the worker's init_process_group statements (removed)


def spawn_calls(ctx: Context, module: cst.Module) -> list[cst.Call]:
    return [
        n for n in all_nodes(module) if isinstance(n, cst.Call) and ctx.is_(n.func, *SPAWN, *OTHER_STARTS)
    ]


def plan(ctx: Context, module: cst.Module) -> SpawnPlan | str:
    """The plan for the script's spawn entry point, or the reason it is not provable."""
    calls = spawn_calls(ctx, module)
    if len(calls) != 1 or not ctx.is_(calls[0].func, *SPAWN):
        return "more than one process start, or `start_processes`"
    call = calls[0]
    statement = ctx.parent(ctx.parent(call))  # type: ignore[arg-type]
    if not isinstance(statement, cst.SimpleStatementLine) or only_call(statement) is not call:
        return "the spawn's result is used (a context, `join=False`)"
    names = ["fn", "args", "nprocs", "join", "daemon", "start_method"]
    given: dict[str, cst.BaseExpression] = {names[i]: a.value for i, a in enumerate(positional(call))}
    given.update({k: a.value for k, a in kwargs(call).items()})
    if len(positional(call)) + len(kwargs(call)) != len(call.args) or set(given) - set(names):
        return "the spawn call takes starred or unknown arguments"
    if not _is_const(given.get("join"), True) or not _is_const(given.get("daemon"), False):
        return "`join=False` or `daemon=True`"
    start = given.get("start_method")
    if start is not None and not (isinstance(start, cst.SimpleString) and start.evaluated_value == "spawn"):
        return "a start method other than spawn"
    fn, spawn_args = given.get("fn"), given.get("args", cst.Tuple([]))
    if not isinstance(fn, cst.Name) or not isinstance(spawn_args, cst.Tuple):
        return "the worker is not a plain name or its arguments are not a tuple literal"
    if any(isinstance(e, cst.StarredElement) for e in spawn_args.elements):
        return "starred worker arguments"
    args = [e.value for e in spawn_args.elements]
    nprocs = given.get("nprocs", cst.Integer("1"))
    worker = next(
        (s for s in module.body if isinstance(s, cst.FunctionDef) and s.name.value == fn.value), None
    )
    if worker is None:
        return f"the worker `{fn.value}` is not a function defined at the top of this file"
    params = worker.params
    if params.star_arg is not cst.MaybeSentinel.DEFAULT or params.star_kwarg or params.kwonly_params:
        return f"the worker `{fn.value}` takes starred or keyword-only parameters"
    plain = [*params.posonly_params, *params.params]
    if len(plain) != 1 + len(args) or any(p.default is not None for p in plain):
        return f"the worker `{fn.value}` does not take exactly (rank, *args)"
    rank = plain[0].name.value
    world = {p.name.value for p, a in zip(plain[1:], args) if _same(ctx, a, nprocs)}
    inits = []
    for node in all_nodes(module):
        if isinstance(node, cst.Call) and ctx.is_(node.func, *INIT):
            inits.append(node)
    init_statements = []
    for init in inits:
        owner = ctx.parent(ctx.parent(init))  # type: ignore[arg-type]
        if not isinstance(owner, cst.SimpleStatementLine) or only_call(owner) is not init:
            return "an init_process_group whose result is used"
        if not any(owner is s for s in all_nodes(worker)):
            return "an init_process_group outside the worker"
        given_init = {k: a.value for k, a in kwargs(init).items()}
        if len(positional(init)) > 1 or set(given_init) - _INIT_ARGS:
            return "init_process_group with arguments the tool does not map"
        method = given_init.get("init_method")
        if method is not None and not (
            isinstance(method, cst.SimpleString) and method.evaluated_value == "env://"
        ):
            return "init_process_group with an address of its own"
        if not (_is_name(given_init.get("rank"), {rank}) and _is_name(given_init.get("world_size"), world)):
            return (
                f"init_process_group's rank is not the worker's first parameter `{rank}`, or its world size "
                "is not the spawn's `nprocs`"
            )
        if _assigned(ctx, worker, {rank, *world}):
            return "the worker reassigns its rank or world size"
        init_statements.append(owner)
    if not init_statements:
        return "the worker starts no process group"
    enclosing = _enclosing_function(ctx, statement)
    if enclosing is None:
        return "the spawn is inside a nested function or a class"
    return SpawnPlan(statement, fn.value, args, nprocs, enclosing or None, init_statements)


def replacement(ctx: Context, spawn: SpawnPlan, creation_args: list[str]) -> list[cst.BaseStatement]:
    """The statements that take the place of ``mp.spawn(...)``."""
    module = ctx.module
    nprocs = module.code_for_node(spawn.nprocs)
    args = ", ".join([f"{FABRIC}.local_rank", *(module.code_for_node(a) for a in spawn.args)])
    fabric_args = ", ".join(['strategy="ddp"', f"devices={nprocs}", *creation_args])
    lines = [
        f"{FABRIC} = Fabric({fabric_args})  # added by `fabric port`: starts the processes mp.spawn started\n",
        f"{FABRIC}.launch()\n",
        f"{spawn.worker}({args})\n",
    ]
    statements: list[cst.BaseStatement] = [cst.parse_statement(line) for line in lines]
    statements[0] = statements[0].with_changes(leading_lines=spawn.statement.leading_lines)
    return statements


class GlobalFabric(cst.CSTTransformer):
    """Declare ``global fabric`` at the top of the function that now creates it (so every function sees it)."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function
        self.depth = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.depth += 1

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        self.depth -= 1
        if (
            self.depth
            or updated.name.value != self.function
            or not isinstance(updated.body, cst.IndentedBlock)
        ):
            return updated
        body = list(updated.body.body)
        docstring = 1 if body and _is_docstring(body[0]) else 0
        body.insert(docstring, cst.parse_statement(f"global {FABRIC}  # added by `fabric port`\n"))
        return updated.with_changes(body=updated.body.with_changes(body=body))


# ------------------------------------------------------------------------------------------ helpers
def _is_const(node: cst.BaseExpression | None, value: bool) -> bool:
    return node is None or (isinstance(node, cst.Name) and node.value == str(value))


def _is_name(node: cst.BaseExpression | None, names: set[str]) -> bool:
    return isinstance(node, cst.Name) and node.value in names


def _same(ctx: Context, a: cst.BaseExpression, b: cst.BaseExpression) -> bool:
    """The same plain name or integer literal (so the same value at the spawn)."""
    if isinstance(a, cst.Name) and isinstance(b, cst.Name):
        return a.value == b.value
    return (
        isinstance(a, cst.Integer) and isinstance(b, cst.Integer) and a.evaluated_value == b.evaluated_value
    )


def _assigned(ctx: Context, function: cst.FunctionDef, names: set[str]) -> bool:
    for node in all_nodes(function.body):
        targets: list[cst.BaseExpression] = []
        if isinstance(node, (cst.AssignTarget, cst.AugAssign, cst.AnnAssign, cst.For, cst.CompFor)):
            targets = [node.target]
        elif isinstance(node, cst.Global):
            return True  # the names may live elsewhere: not followed
        for target in targets:
            if any(isinstance(n, cst.Name) and n.value in names for n in all_nodes(target)):
                return True
    return False


def _enclosing_function(ctx: Context, node: cst.CSTNode) -> str | None:
    """The name of the module-level function around ``node``, ``""`` at module level, None if deeper."""
    found = ""
    parent = ctx.parent(node)
    while parent is not None and not isinstance(parent, cst.Module):
        if isinstance(parent, (cst.ClassDef, cst.Lambda)):
            return None
        if isinstance(parent, cst.FunctionDef):
            if found:
                return None
            found = parent.name.value
            if not isinstance(ctx.parent(parent), cst.Module):
                return None
        parent = ctx.parent(parent)
    return found


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )
