"""Mixed precision: ``torch.autocast`` (and a ``GradScaler``) into ``Fabric(precision=...)``.

Converted only when the precision is a fact of the code: every autocast in the script names the same
dtype (a literal ``torch.bfloat16``/``torch.float16``, or the device type's default) and none has an
``enabled=`` switch. ``with torch.autocast(...)`` becomes ``with fabric.autocast():``, which enters the
same autocast, and the Fabric object is created with ``precision="bf16-mixed"`` or ``"16-mixed"``.

float16 comes with a hand-written ``GradScaler``. Fabric's ``"16-mixed"`` owns a scaler of its own
(``torch.amp.GradScaler(device_type)``, on the CPU too) that scales in ``fabric.backward``, unscales in
``fabric.clip_gradients`` and unscales, skips non-finite steps and updates the scale inside the
set-up optimizer's ``step()``. So the scaler is converted only in the loop the tool can see whole:

- ``scaler = GradScaler(device)`` with default settings, used only through the four calls below;
- ``scaler.scale(loss).backward()`` -> ``fabric.backward(loss)``;
- ``scaler.unscale_(opt)`` directly followed by ``clip_grad_norm_(model.parameters(), max_norm)`` ->
  ``fabric.clip_gradients(model, opt, max_norm=max_norm)``;
- ``scaler.step(opt)`` -> ``opt.step()``, with ``opt = fabric.setup_optimizers(opt)`` added after the
  one assignment of ``opt`` in the same function; ``scaler.update()`` is deleted (the scale is updated
  before the next ``backward``, so each step sees the scale the original used).

The model is not set up: its forward stays under the script's own autocast, so the numbers are the
original's. A script with DDP (whose ``setup_module`` would add the precision's autocast and float32
outputs to the forward), a scaler with options, passed elsewhere, checkpointed or read, or any other
shape is reported with each call's replacement.
"""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from fabric.port.entry import is_main_guard
from fabric.port.rules import FABRIC, Rule, all_nodes, kwargs, only_call, positional, removed, string_value

_AUTOCAST = (
    "torch.autocast",
    "torch.amp.autocast",
    "torch.cuda.amp.autocast",
    "torch.cpu.amp.autocast",
    "torch.amp.autocast_mode.autocast",
)
_SCALER = (
    "torch.amp.GradScaler",
    "torch.cuda.amp.GradScaler",
    "torch.GradScaler",
    "torch.cpu.amp.GradScaler",
    "torch.amp.grad_scaler.GradScaler",
)
_CLIP = ("torch.nn.utils.clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_norm_")
_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "16", "torch.half": "16"}
_SCALER_FIX = {
    "scale": "`fabric.backward(loss)` (scales the loss under precision='16-mixed')",
    "step": "`optimizer.step()` on the optimizer from `fabric.setup_optimizers(optimizer)`",
    "update": "delete: the set-up optimizer's step updates the scale",
    "unscale_": "delete, and clip with `fabric.clip_gradients(model, optimizer, max_norm=...)`",
}


class AmpRule(Rule):
    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.autocasts: set[cst.Call] = set()
        self.scalers: set[str] = set()
        #: original statements of a converted scaler loop and what becomes of each
        self.rewrites: dict[cst.SimpleStatementLine, str] = {}
        self.optimizer = ""
        #: the module-level on/off switch of autocast and scaler, "" when they are always on
        self.flag = ""
        #: the clipping statement after ``scaler.unscale_(opt)``, and that statement (whose comments move down)
        self.unscaled: dict[cst.SimpleStatementLine, cst.SimpleStatementLine] = {}

    def _switch(self, call: cst.Call) -> str | None:
        """The code of an ``enabled=`` argument, ``"True"`` without one; None when passed by position."""
        named = kwargs(call)
        most = 1 if self.ctx.is_(call.func, "torch.autocast", "torch.amp.autocast", *_SCALER) else 0
        if len(positional(call)) > most or any(a.star for a in call.args):
            return None
        return self.ctx.module.code_for_node(named["enabled"].value) if "enabled" in named else "True"

    def _flag(self, calls: list[cst.Call], module: cst.Module) -> str | None:
        """``""`` when autocast (and scaler) are always on; the name of a module-level switch such as
        ``use_amp = True`` that every one of them reads; None otherwise (a flag known only at run time).

        The switch must be set once, by a statement of the module before its ``__main__`` block, where the
        Fabric object is created (``convert`` leaves the script whole if the object goes elsewhere)."""
        switches = {self._switch(c) for c in calls}
        if switches == {"True"}:
            return ""
        flag = next(iter(switches)) if len(switches) == 1 else None
        if not flag or not flag.isidentifier():
            return None
        guard = next((i for i, s in enumerate(module.body) if is_main_guard(s)), None)
        defined = [
            (i, small)
            for i, s in enumerate(module.body)
            if isinstance(s, cst.SimpleStatementLine)
            for small in s.body
            if isinstance(small, cst.Assign)
            and len(small.targets) == 1
            and isinstance(small.targets[0].target, cst.Name)
            and small.targets[0].target.value == flag
        ]
        if guard is None or len(defined) != 1 or defined[0][0] > guard:
            return None
        target = defined[0][1].targets[0].target
        scope = self.ctx.scope(target)
        if scope is None or len(scope.assignments[flag]) != 1:
            return None
        assignment = next(iter(scope.assignments[flag]))
        for arg in (kwargs(c)["enabled"] for c in calls):
            read_scope = self.ctx.scope(arg.value)
            if read_scope is None or not isinstance(arg.value, cst.Name):
                return None
            if any(r is not assignment for a in read_scope.accesses[arg.value] for r in a.referents):
                return None  # a local of the same name
        return flag

    def _dtype(self, call: cst.Call) -> str | None:
        named = kwargs(call)
        if "dtype" in named:
            for name in self.ctx.qualified(named["dtype"].value):
                if name in _DTYPES:
                    return _DTYPES[name]
            return None
        if self.ctx.is_(call.func, "torch.cuda.amp.autocast"):
            return "16"
        if self.ctx.is_(call.func, "torch.cpu.amp.autocast"):
            return "bf16"
        device = positional(call) or [a for a in call.args if a.keyword and a.keyword.value == "device_type"]
        kind = string_value(device[0].value) if device else None
        return {"cuda": "16", "cpu": "bf16"}.get(kind or "")

    def analyze(self, module: cst.Module) -> None:
        calls = [n for n in all_nodes(module) if isinstance(n, cst.Call)]
        autocasts = [c for c in calls if self.ctx.is_(c.func, *_AUTOCAST)]
        scalers = [c for c in calls if self.ctx.is_(c.func, *_SCALER)]
        for node in all_nodes(module):
            if isinstance(node, cst.Assign) and isinstance(node.value, cst.Call) and node.value in scalers:
                self.scalers |= {t.target.value for t in node.targets if isinstance(t.target, cst.Name)}
        dtypes = {self._dtype(c) for c in autocasts}
        flag = self._flag([*autocasts, *scalers], module)
        self.flag = flag or ""
        if autocasts and not scalers and dtypes == {"bf16"} and flag is not None:
            self.ctx.precision = "bf16-mixed"
            self.ctx.precision_flag = flag or None
            self.autocasts = set(autocasts)
            return
        if (
            autocasts
            and dtypes == {"16"}
            and len(scalers) == 1
            and not self.ctx.distributed
            and flag is not None
        ):
            rewrites = self._scaler_loop(scalers[0])
            if rewrites is not None:
                self.ctx.precision = "16-mixed"
                self.ctx.precision_flag = flag or None
                self.autocasts = set(autocasts)
                self.rewrites = rewrites
                return
        for scaler in scalers:
            self.ctx.left(
                scaler,
                "a GradScaler whose use the tool cannot follow whole (options, DDP, other calls)",
                "delete it and create `Fabric(precision='16-mixed')`; set up the optimizer with "
                "`fabric.setup_optimizers(optimizer)`; replace each scaler call as listed",
            )
        for call in autocasts:
            self.ctx.left(
                call,
                "the autocast dtype or its on/off switch is decided at run time"
                if not scalers or None in dtypes
                else "autocast together with a hand-written GradScaler",
                "pick the precision once: `Fabric(precision='bf16-mixed' or '16-mixed')`, replace the block's "
                "`with` by `with fabric.autocast():` (or drop it for a model from `fabric.setup`)",
            )

    # ------------------------------------------------------------------------------- the scaler loop
    def _statement_of(self, node: cst.CSTNode) -> cst.SimpleStatementLine | None:
        """The statement that is just this call (``f(...)``), else None."""
        expr = self.ctx.parent(node)
        line = self.ctx.parent(expr) if isinstance(expr, cst.Expr) else None
        return line if isinstance(line, cst.SimpleStatementLine) and only_call(line) is node else None

    def _next(self, statement: cst.SimpleStatementLine) -> cst.BaseStatement | None:
        block = self.ctx.parent(statement)
        body: Sequence[cst.BaseStatement] = getattr(block, "body", ())
        for i, node in enumerate(body):
            if node is statement:
                return body[i + 1] if i + 1 < len(body) else None
        return None

    def _clip(self, statement: cst.BaseStatement | None) -> str | None:
        """``clip_grad_norm_(model.parameters(), max_norm[, norm_type=...])``, as Fabric's call."""
        if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
            return None
        small = statement.body[0]
        call = small.value if isinstance(small, (cst.Expr, cst.Assign)) else None
        if (
            not isinstance(call, cst.Call)
            or not self.ctx.is_(call.func, *_CLIP)
            or any(a.star for a in call.args)
        ):
            return None
        args, named = positional(call), kwargs(call)
        if len(args) > 2 or set(named) - {"parameters", "max_norm", "norm_type"}:
            return None
        params = args[0].value if args else named["parameters"].value if "parameters" in named else None
        norm = args[1].value if len(args) > 1 else named["max_norm"].value if "max_norm" in named else None
        if not (
            isinstance(params, cst.Call)
            and not params.args
            and isinstance(params.func, cst.Attribute)
            and params.func.attr.value == "parameters"
            and norm is not None
        ):
            return None
        code = self.ctx.module.code_for_node
        extra = f", norm_type={code(named['norm_type'].value)}" if "norm_type" in named else ""
        if self.flag:
            # with the switch off Fabric's "32-true" would raise on a non-finite norm; the original did not
            extra += ", error_if_nonfinite=False"
        return f"{code(params.func.value)}, {self.optimizer}, max_norm={code(norm)}{extra}"

    def _scaler_loop(self, scaler: cst.Call) -> dict[cst.SimpleStatementLine, str] | None:
        """The statements of a scaler loop that converts, each with its new code; None if any doubt."""
        assign = self.ctx.parent(scaler)
        line = self.ctx.parent(assign) if isinstance(assign, cst.Assign) else None
        if not (
            isinstance(assign, cst.Assign)
            and isinstance(line, cst.SimpleStatementLine)
            and len(line.body) == 1
            and len(assign.targets) == 1
            and isinstance(assign.targets[0].target, cst.Name)
        ):
            return None
        named = kwargs(scaler)
        if set(named) - {"device", "enabled"} or len(positional(scaler)) > 1:
            return None  # init_scale, growth_factor...: not Fabric's scaler
        accesses = self.ctx.accesses(assign.targets[0].target)
        if not accesses:
            return None
        rewrites: dict[cst.SimpleStatementLine, str] = {line: ""}
        optimizers: set[str] = set()
        for node in accesses:
            method = self.ctx.parent(node)
            call = self.ctx.parent(method) if isinstance(method, cst.Attribute) else None
            if (
                not isinstance(method, cst.Attribute)
                or not isinstance(call, cst.Call)
                or call.func is not method
            ):
                return None
            name, args = method.attr.value, positional(call)
            if len(args) != len(call.args) or len(args) != (0 if name == "update" else 1):
                return None
            arg = args[0].value if args else None
            if name == "scale":
                backward = self.ctx.parent(call)
                outer = self.ctx.parent(backward) if isinstance(backward, cst.Attribute) else None
                statement = self._statement_of(outer) if isinstance(outer, cst.Call) else None
                if (
                    statement is None
                    or not isinstance(backward, cst.Attribute)
                    or backward.attr.value != "backward"
                    or outer.args  # type: ignore[union-attr]
                    or not isinstance(arg, (cst.Name, cst.Attribute))
                ):
                    return None
                rewrites[statement] = f"{FABRIC}.backward({self.ctx.module.code_for_node(arg)})"
                continue
            statement = self._statement_of(call)
            if statement is None or name not in ("unscale_", "step", "update"):
                return None
            if name == "update":
                rewrites[statement] = ""
                continue
            if not isinstance(arg, cst.Name):
                return None
            optimizers.add(arg.value)
            self.optimizer = arg.value
            if name == "step":
                rewrites[statement] = f"{arg.value}.step()"
                continue
            following = self._next(statement)
            clip = self._clip(following)
            if clip is None:
                return None
            assert isinstance(following, cst.SimpleStatementLine)
            rewrites[statement] = ""
            self.unscaled[following] = statement
            assigned = following.body[0]
            target = (
                self.ctx.module.code_for_node(assigned.targets[0].target) + " = "
                if isinstance(assigned, cst.Assign) and len(assigned.targets) == 1
                else ""
            )
            if isinstance(assigned, cst.Assign) and not target:
                return None
            rewrites[following] = f"{target}{FABRIC}.clip_gradients({clip})"
        if len(optimizers) != 1 or "step()" not in " ".join(rewrites.values()):
            return None
        created = self._optimizer_assignment(accesses[0], self.optimizer)
        if created is None:
            return None
        rewrites[created] = f"{self.optimizer} = {FABRIC}.setup_optimizers({self.optimizer})"
        return rewrites

    def _optimizer_assignment(self, near: cst.CSTNode, name: str) -> cst.SimpleStatementLine | None:
        """The one statement ``name = ...`` of the scope where the scaler is used."""
        scope = self.ctx.scope(near)
        if scope is None or name not in scope.assignments:
            return None
        assignments = list(scope.assignments[name])
        if len(assignments) != 1:
            return None
        target = assignments[0].node
        assign_target = self.ctx.parent(target)
        assign = self.ctx.parent(assign_target) if isinstance(assign_target, cst.AssignTarget) else None
        line = self.ctx.parent(assign) if isinstance(assign, cst.Assign) else None
        if isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1 and len(assign.targets) == 1:  # type: ignore[union-attr]
            return line
        return None

    # ----------------------------------------------------------------------------------------- hooks
    def statement(self, original, updated):  # type: ignore[no-untyped-def]
        if original not in self.rewrites:
            return None
        code = self.rewrites[original]
        if code.endswith("setup_optimizers(" + self.optimizer + ")"):
            self.ctx.done(
                original, "the optimizer steps through Fabric's gradient scaler (precision='16-mixed')"
            )
            self.ctx.fabric()
            added = cst.parse_statement(code + "\n")
            return cst.FlattenSentinel([updated, added])
        self.ctx.done(original, "Fabric's precision='16-mixed' scales, unscales, skips and updates")
        if original in self.unscaled.values() and original.trailing_whitespace.comment is None:
            return cst.RemoveFromParent()  # its comment lines go to the clipping that replaces it
        if not code:
            return removed(original)
        self.ctx.fabric()
        new = cst.parse_statement(code + "\n")
        assert isinstance(new, cst.SimpleStatementLine)
        leading = list(updated.leading_lines)
        unscale = self.unscaled.get(original)
        if unscale is not None and unscale.trailing_whitespace.comment is None:
            leading = [*unscale.leading_lines, *leading]
        return new.with_changes(leading_lines=leading, trailing_whitespace=updated.trailing_whitespace)

    def with_(self, original, updated):  # type: ignore[no-untyped-def]
        if len(original.items) != 1 or original.items[0].item not in self.autocasts:
            return None
        self.ctx.done(original, f"the precision's autocast (Fabric(precision='{self.ctx.precision}'))")
        item = updated.items[0].with_changes(item=cst.Call(func=self.ctx.fabric("autocast")))
        return updated.with_changes(items=[item])

    def call(self, original, updated):  # type: ignore[no-untyped-def]
        func = original.func
        if (
            not self.rewrites
            and isinstance(func, cst.Attribute)
            and isinstance(func.value, cst.Name)
            and func.value.value in self.scalers
        ):
            fix = _SCALER_FIX.get(func.attr.value)
            if fix:
                self.ctx.left(original, "a GradScaler call", fix)
        return None
