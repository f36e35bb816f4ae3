"""``loss.backward()`` becomes ``fabric.backward(loss)``, also inside optimizer closures.

Only a backward on a name or attribute (``loss``, ``out.loss``) without a gradient argument is
rewritten; ``retain_graph``/``create_graph`` pass through. ``y.backward(grad)`` (a vector-Jacobian
product) and a backward on an expression are left and reported.
"""

from __future__ import annotations

import libcst as cst

from fabric.port.rules import Rule, positional


class BackwardRule(Rule):
    def call(self, original, updated):  # type: ignore[no-untyped-def]
        func = original.func
        if not (isinstance(func, cst.Attribute) and func.attr.value == "backward"):
            return None
        if self.ctx.is_(func.value, "torch.autograd", "torch"):
            return None  # torch.autograd.backward(...): a function, not a tensor method
        if not isinstance(func.value, (cst.Name, cst.Attribute)):
            inner = func.value.func if isinstance(func.value, cst.Call) else None
            if isinstance(inner, cst.Attribute) and inner.attr.value == "scale":
                return None  # scaler.scale(loss).backward(): the AMP rule's
            self.ctx.left(
                original,
                "backward on an expression",
                "assign the tensor to a name and call `fabric.backward(name)`",
            )
            return None
        if positional(original):
            self.ctx.left(
                original,
                "backward with an explicit gradient",
                "if this is the training loss, call `fabric.backward(tensor, gradient)`",
            )
            return None
        self.ctx.done(original, "the backward pass goes through Fabric (precision, strategy)")
        updated_func = updated.func
        assert isinstance(updated_func, cst.Attribute)
        rest = list(updated.args)
        first = cst.Arg(updated_func.value)
        if rest:
            first = first.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        return cst.Call(func=self.ctx.fabric("backward"), args=[first, *rest])
