"""Rank queries, rank-0 checks and prints, and collectives, into the Fabric object's.

``dist.get_rank()``/``get_world_size()`` become ``fabric.global_rank``/``fabric.world_size``;
``dist.get_rank() == 0`` becomes ``fabric.is_global_zero`` and a ``print`` directly under that check
becomes ``fabric.print`` (which prints on rank 0 only, so it is the same). A rank held in a variable is
not followed: its value may have come from anywhere (``rank = 0`` in a single-process branch).
``dist.all_reduce(t)`` works in place while ``fabric.all_reduce`` returns the result, so the statement
becomes ``t = fabric.all_reduce(t, reduce_op="sum")`` where ``t`` is a plain name; ``dist.barrier()``
becomes ``fabric.barrier()``. Other collectives fill lists or work on groups and are reported.
"""

from __future__ import annotations

import libcst as cst

from fabric.port.rules import Rule, kwargs, only_call, positional

_DIST = "torch.distributed."
_REDUCE_OPS = {"SUM": "sum", "AVG": "mean", "MAX": "max", "MIN": "min"}
_REPORTED = {
    "all_gather": "`fabric.all_gather(t)` returns one tensor stacked over processes: "
    "replace the list with `gathered = fabric.all_gather(t)`",
    "all_gather_object": "gather tensors with `fabric.all_gather`, or keep this call (it works under Fabric)",
    "broadcast": "`t = fabric.broadcast(t, src)` returns the tensor instead of filling it",
    "broadcast_object_list": "`obj = fabric.broadcast(obj, src)`",
    "reduce": "use `fabric.all_reduce(t, reduce_op=...)` (every process gets the result)",
    "all_reduce": "use `t = fabric.all_reduce(t, reduce_op='sum')` with a plain tensor name and no group",
}


def _dist(ctx, node: cst.BaseExpression, name: str) -> bool:  # type: ignore[no-untyped-def]
    return ctx.is_(node, _DIST + name, _DIST + "distributed_c10d." + name)


def rank_zero(ctx, node: cst.BaseExpression) -> str | None:  # type: ignore[no-untyped-def]
    """``"=="``/``"!="`` when ``node`` is ``dist.get_rank() == 0`` (either side), else None."""
    if not isinstance(node, cst.Comparison) or len(node.comparisons) != 1:
        return None
    target = node.comparisons[0]
    op = (
        "=="
        if isinstance(target.operator, cst.Equal)
        else "!="
        if isinstance(target.operator, cst.NotEqual)
        else None
    )
    sides = (node.left, target.comparator)
    for rank, zero in (sides, sides[::-1]):
        if (
            op
            and isinstance(rank, cst.Call)
            and not rank.args
            and _dist(ctx, rank.func, "get_rank")
            and isinstance(zero, cst.Integer)
            and zero.evaluated_value == 0
        ):
            return op
    return None


class CollectiveRule(Rule):
    def _rank_zero(self, node: cst.BaseExpression) -> str | None:
        return rank_zero(self.ctx, node)

    def comparison(self, original, updated):  # type: ignore[no-untyped-def]
        op = self._rank_zero(original)
        if op is None:
            return None
        self.ctx.done(original, "the rank-0 check is Fabric's")
        zero = self.ctx.fabric("is_global_zero")
        if op == "!=":
            return cst.UnaryOperation(operator=cst.Not(), expression=zero)
        return zero.with_changes(lpar=updated.lpar, rpar=updated.rpar)

    def if_(self, original, updated):  # type: ignore[no-untyped-def]
        if self._rank_zero(original.test) != "==" or not isinstance(updated.body, cst.IndentedBlock):
            return None
        for statement in original.body.body:
            call = only_call(statement) if isinstance(statement, cst.SimpleStatementLine) else None
            if call is not None and self.ctx.is_(call.func, "builtins.print"):
                self.ctx.done(statement, "fabric.print prints on rank 0 only, as the check around it did")
        body = []
        for statement in updated.body.body:
            call = only_call(statement) if isinstance(statement, cst.SimpleStatementLine) else None
            if call is not None and isinstance(call.func, cst.Name) and call.func.value == "print":
                # the original statements were checked to be the builtin print just above
                assert isinstance(statement, cst.SimpleStatementLine)
                new_call = call.with_changes(func=self.ctx.fabric("print"))
                expr = statement.body[0]
                assert isinstance(expr, cst.Expr)
                statement = statement.with_changes(body=[expr.with_changes(value=new_call)])
            body.append(statement)
        return updated.with_changes(body=updated.body.with_changes(body=body))

    def call(self, original, updated):  # type: ignore[no-untyped-def]
        if original.args:
            for name, fix in _REPORTED.items():
                if name != "all_reduce" and _dist(self.ctx, original.func, name):
                    self.ctx.left(original, f"torch.distributed.{name} has no one-to-one Fabric call", fix)
            return None
        for name, attr in (("get_rank", "global_rank"), ("get_world_size", "world_size"), ("barrier", None)):
            if _dist(self.ctx, original.func, name):
                self.ctx.done(original, f"Fabric's {attr or 'barrier'}")
                if attr is None:
                    return cst.Call(func=self.ctx.fabric("barrier"))
                return self.ctx.fabric(attr)
        return None

    def statement(self, original, updated):  # type: ignore[no-untyped-def]
        call = only_call(original)
        if call is None or not _dist(self.ctx, call.func, "all_reduce"):
            return None
        args, named = positional(call), kwargs(call)
        op = "sum"
        if "op" in named:
            value = named["op"].value
            op_name = value.attr.value if isinstance(value, cst.Attribute) else ""
            if op_name not in _REDUCE_OPS or not any(
                q.endswith("ReduceOp." + op_name) for q in self.ctx.qualified(value)
            ):
                op = ""
            else:
                op = _REDUCE_OPS[op_name]
        if len(args) != 1 or not isinstance(args[0].value, cst.Name) or set(named) - {"op"} or not op:
            self.ctx.left(
                original,
                "an all_reduce with a group, async_op, an unknown op or an expression",
                _REPORTED["all_reduce"],
            )
            return None
        self.ctx.done(original, "Fabric's all_reduce returns the reduced tensor; the name is rebound to it")
        name = args[0].value
        new = cst.Call(
            func=self.ctx.fabric("all_reduce"),
            args=[
                cst.Arg(name, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                cst.Arg(
                    cst.SimpleString(f'"{op}"'),
                    keyword=cst.Name("reduce_op"),
                    equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")),
                ),
            ],
        )
        assign = cst.Assign(targets=[cst.AssignTarget(target=cst.Name(name.value))], value=new)
        return updated.with_changes(body=[assign])
