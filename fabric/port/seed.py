"""Seeding: ``torch.manual_seed(s)`` into ``fabric.seed_everything(s)`` where the numbers stay the same.

``seed_everything`` also seeds Python's ``random`` and NumPy, so a script that uses either could draw
other numbers after the port (it may seed them elsewhere, or rely on their own state): there the
call is left and reported. ``verbose=False`` keeps the output the same as before.
"""

from __future__ import annotations

import libcst as cst

from fabric.port.rules import Rule, all_nodes, only_call, positional


class SeedRule(Rule):
    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.other_generators = False

    def analyze(self, module: cst.Module) -> None:
        for node in all_nodes(module):
            if isinstance(node, (cst.Name, cst.Attribute)):
                for name in self.ctx.qualified(node):
                    if name == "random" or name.startswith(("random.", "numpy")):
                        self.other_generators = True

    def statement(self, original, updated):  # type: ignore[no-untyped-def]
        call = only_call(original)
        if call is None or not self.ctx.is_(call.func, "torch.manual_seed"):
            return None
        if self.other_generators or len(positional(call)) != 1 or len(call.args) != 1:
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
