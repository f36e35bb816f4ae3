"""``torch.save``/``torch.load`` into ``fabric.save``/``fabric.load`` where the script reads its own file.

A file is converted only when this script is provably the one that reads it back: the same path
expression (same code text) is written by ``torch.save`` and read by ``torch.load`` in this script,
and every save and load of that path converts. Then

- ``torch.save({...}, path)`` -> ``fabric.save(path, {...})``: the dict is kept as written (its
  ``model.state_dict()`` values stay), so the file holds the same entries; rank 0 writes it
  atomically and every process waits for it;
- ``torch.load(path[, weights_only=...])`` -> ``fabric.load(path, restore_rng=False)``: without a
  state, ``fabric.load`` returns the saved dict, which the script's ``load_state_dict`` calls use as
  before. ``restore_rng=False`` because ``torch.load`` never touched the random state, and the
  numbers of a resumed run must stay the original's.

``fabric.save`` is collective. In a script that runs several processes a save under an ``if`` (a
rank check with more in it, ``if best:``...) is left: whether every process reaches it cannot be told
from the code (a save under a rank check is left in any script: its process group may come from elsewhere).
The one exception is ``if dist.get_rank() == 0:`` whose whole body is the save (no
``else``): the ``if`` is dropped, as ``fabric.save`` writes on rank 0 by itself.
Anything else (a first argument that is not a dict literal, ``map_location``, a path that only one
side uses: a file another program reads or that came from elsewhere) is reported with the manual change.
"""

from __future__ import annotations

import libcst as cst

from fabric.port.collectives import rank_zero
from fabric.port.entry import is_main_guard
from fabric.port.rules import Rule, all_nodes, kwargs, positional

_SAVE_FIX = (
    "if only this script reads it back, call `fabric.save(path, {'model': model, 'optimizer': optimizer, ...})` "
    "on every process (not under a rank check): rank 0 writes atomically"
)
_LOAD_FIX = (
    "for files written by `fabric.save`, use `fabric.load(path, state)`; for plain files keep torch.load or "
    "use `fabric.load_raw(path, model)`"
)


class CheckpointRule(Rule):
    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        #: the save and load calls that convert
        self.convert: set[cst.Call] = set()
        #: ``if dist.get_rank() == 0:`` blocks that hold only a converted save, which takes their place
        self.hoist: dict[cst.If, cst.Call] = {}
        #: why a save or load of a path that this script both writes and reads is left
        self.why: dict[cst.Call, str] = {}

    def _path(self, call: cst.Call, index: int) -> str | None:
        args = positional(call)
        return self.ctx.module.code_for_node(args[index].value) if len(args) > index else None

    def _save_ok(self, call: cst.Call) -> str | None:
        """None when this ``torch.save`` converts by its shape, else why not."""
        args = positional(call)
        if len(args) != 2 or len(call.args) != 2 or not isinstance(args[0].value, cst.Dict):
            return "fabric.save takes a dict of entries; this saves another object or passes options"
        expr = self.ctx.parent(call)
        statement = self.ctx.parent(expr) if isinstance(expr, cst.Expr) else None
        node = self.ctx.parent(call)
        while (
            node is not None
            and not isinstance(node, (cst.FunctionDef, cst.Module))
            and not is_main_guard(node)
        ):
            if isinstance(node, cst.If) and (self.ctx.distributed or rank_zero(self.ctx, node.test)):
                if self._only_save_under_rank_zero(node, statement) and node not in self.hoist:
                    self.hoist[node] = call
                else:
                    return (
                        "fabric.save is collective (every process must call it) and this save runs under a "
                        "condition that may not hold on every process"
                    )
            node = self.ctx.parent(node)
        return None

    def _only_save_under_rank_zero(self, node: cst.If, statement: cst.CSTNode | None) -> bool:
        """``if dist.get_rank() == 0:`` with no ``else``, whose whole body is the save: safe to drop the ``if``."""
        body = node.body
        return (
            rank_zero(self.ctx, node.test) == "=="
            and node.orelse is None
            and isinstance(body, cst.IndentedBlock)
            and body.header.comment is None
            and len(body.body) == 1
            and body.body[0] is statement
            and isinstance(statement, cst.SimpleStatementLine)
            and len(statement.body) == 1
        )

    def analyze(self, module: cst.Module) -> None:
        calls = [n for n in all_nodes(module) if isinstance(n, cst.Call)]
        saves = [c for c in calls if self.ctx.is_(c.func, "torch.save")]
        loads = [c for c in calls if self.ctx.is_(c.func, "torch.load")]
        read = {self._path(c, 0) for c in loads} - {None}
        written = {self._path(c, 1) for c in saves} - {None}
        for path in read & written:
            why: dict[cst.Call, str] = {}
            for save in (c for c in saves if self._path(c, 1) == path):
                reason = self._save_ok(save)
                if reason:
                    why[save] = reason
            for load in (c for c in loads if self._path(c, 0) == path):
                if len(positional(load)) != 1 or set(kwargs(load)) - {"weights_only"}:
                    why[load] = (
                        "fabric.load places the tensors itself: map_location and other options do not carry over"
                    )
            group = [c for c in saves + loads if path in (self._path(c, 0), self._path(c, 1))]
            if why:  # the file's format must stay one: leave every call on this path
                for call in group:
                    self.why[call] = why.get(
                        call, "another save or load of the same file is left: " + next(iter(why.values()))
                    )
            else:
                self.convert |= set(group)

    def if_(self, original, updated):  # type: ignore[no-untyped-def]
        if self.hoist.get(original) not in self.convert:
            return None
        self.ctx.done(original, "fabric.save writes on rank 0 itself; every process must call it")
        saved = updated.body.body[0]
        return saved.with_changes(leading_lines=[*updated.leading_lines, *saved.leading_lines])

    def call(self, original, updated):  # type: ignore[no-untyped-def]
        if original in self.convert:
            args = positional(updated)
            if self.ctx.is_(original.func, "torch.save"):
                self.ctx.done(
                    original, "this script reads the file back: fabric.save writes it on rank 0, atomically"
                )
                return updated.with_changes(
                    func=self.ctx.fabric("save"),
                    args=[
                        args[1].with_changes(comma=cst.MaybeSentinel.DEFAULT),
                        args[0].with_changes(comma=cst.MaybeSentinel.DEFAULT),
                    ],
                )
            self.ctx.done(original, "the file is written by this script's fabric.save")
            named = kwargs(updated)
            new_args = [args[0].with_changes(comma=cst.MaybeSentinel.DEFAULT)]
            if "weights_only" in named:
                new_args.append(named["weights_only"].with_changes(comma=cst.MaybeSentinel.DEFAULT))
            no_space = cst.SimpleWhitespace("")
            equal = cst.AssignEqual(whitespace_before=no_space, whitespace_after=no_space)
            new_args.append(cst.Arg(keyword=cst.Name("restore_rng"), value=cst.Name("False"), equal=equal))
            return updated.with_changes(func=self.ctx.fabric("load"), args=new_args)
        if self.ctx.is_(original.func, "torch.save"):
            reason = self.why.get(
                original, "whether another program reads this file cannot be told from this script"
            )
            self.ctx.left(original, reason, _SAVE_FIX)
        elif self.ctx.is_(original.func, "torch.load"):
            reason = self.why.get(original, "the file may come from elsewhere (plain torch.save format)")
            self.ctx.left(original, reason, _LOAD_FIX)
        return None
