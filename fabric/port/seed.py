"""Seeding: ``torch.manual_seed(s)`` into ``fabric.seed_everything(s)`` where the numbers stay the same.

``seed_everything`` also seeds Python's ``random`` and NumPy, so a script that uses either could draw
other numbers after the port (it may seed them elsewhere, or rely on their own state): there the
call is left and reported, except right after ``random.seed(s)`` with the same ``s`` (and no NumPy):
seeding ``random`` again with the same seed, with nothing drawn in between, changes nothing.
``verbose=False`` keeps the output the same as before.
"""

from __future__ import annotations

import itertools

import libcst as cst

from fabric.port.rules import Rule, all_nodes, only_call, positional


class SeedRule(Rule):
    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.uses_random = False
        self.uses_numpy = False
        self.after_random_seed: set[cst.SimpleStatementLine] = set()

    def analyze(self, module: cst.Module) -> None:
        for node in all_nodes(module):
            if isinstance(node, (cst.Name, cst.Attribute)):
                for name in self.ctx.qualified(node):
                    self.uses_random |= name == "random" or name.startswith("random.")
                    self.uses_numpy |= name.startswith("numpy")
            body = node.body if isinstance(node, (cst.Module, cst.IndentedBlock)) else None
            if isinstance(body, (list, tuple)):
                for before, statement in itertools.pairwise(body):
                    self._pair(before, statement)

    def _pair(self, before: cst.CSTNode, statement: cst.CSTNode) -> None:
        """Remember ``torch.manual_seed(s)`` right after ``random.seed(s)`` (the same ``s``)."""
        if not (
            isinstance(before, cst.SimpleStatementLine) and isinstance(statement, cst.SimpleStatementLine)
        ):
            return
        first, second = only_call(before), only_call(statement)
        if first is None or second is None or not self.ctx.is_(first.func, "random.seed"):
            return
        if len(first.args) == 1 and len(second.args) == 1:
            code = self.ctx.module.code_for_node
            if code(first.args[0].value) == code(second.args[0].value):
                self.after_random_seed.add(statement)

    def statement(self, original, updated):  # type: ignore[no-untyped-def]
        call = only_call(original)
        if call is None or not self.ctx.is_(call.func, "torch.manual_seed"):
            return None
        reseeds = self.uses_numpy or (self.uses_random and original not in self.after_random_seed)
        if reseeds or len(positional(call)) != 1 or len(call.args) != 1:
            self.ctx.left(
                original,
                "the script also uses `random` or NumPy, whose numbers fabric.seed_everything would change",
                "keep it, or call `fabric.seed_everything(seed)` and check the numbers",
            )
            return None
        self.ctx.done(original, "the same torch seed, through Fabric (also seeds new processes the same way)")
        new = cst.Call(
            func=self.ctx.fabric("seed_everything"),
            args=[
                call.args[0].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                cst.Arg(
                    cst.Name("False"),
                    keyword=cst.Name("verbose"),
                    equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")),
                ),
            ],
        )
        statement = updated.body[0]
        assert isinstance(statement, cst.Expr)
        return updated.with_changes(body=[statement.with_changes(value=new)])
