"""Mixed precision: ``torch.autocast`` into ``Fabric(precision=...)`` and ``fabric.autocast()``.

Converted only when the precision is a fact of the code: every autocast in the script names the same
dtype (a literal ``torch.bfloat16``, or the device type's default) and none has an ``enabled=`` switch.
bfloat16 needs no loss scaling, so ``with torch.autocast(...)`` becomes ``with fabric.autocast():`` and
the Fabric object is created with ``precision="bf16-mixed"``.

A ``GradScaler`` is reported, not rewritten: Fabric's 16-mixed scaling unscales and skips steps inside
the set-up optimizer's ``step()``, so the port needs ``fabric.setup(model, optimizer)`` around code
the tool cannot see whole (checkpoints of the scaler, a second optimizer...). The report lists each
scaler call with its replacement.
"""

from __future__ import annotations

import libcst as cst

from fabric.port.rules import Rule, all_nodes, kwargs, positional, string_value

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
_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "16", "torch.half": "16"}
_SCALER_FIX = {
    "scale": "`fabric.backward(loss)` (scales the loss under precision='16-mixed')",
    "step": "`optimizer.step()` on the optimizer from `fabric.setup(model, optimizer)`",
    "update": "delete: the set-up optimizer's step updates the scale",
    "unscale_": "delete, and clip with `fabric.clip_gradients(model, optimizer, max_norm=...)`",
}


class AmpRule(Rule):
    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.autocasts: set[cst.Call] = set()
        self.scalers: set[str] = set()

    def _dtype(self, call: cst.Call) -> str | None:
        named = kwargs(call)
        if "enabled" in named and not (
            isinstance(named["enabled"].value, cst.Name) and named["enabled"].value.value == "True"
        ):
            return None
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
        for scaler in scalers:
            self.ctx.left(
                scaler,
                "a hand-written GradScaler",
                "delete it and create `Fabric(precision='16-mixed')`; set up the model and optimizer with "
                "`fabric.setup(model, optimizer)`; replace each scaler call as listed",
            )
        dtypes = {self._dtype(c) for c in autocasts}
        if autocasts and not scalers and dtypes == {"bf16"}:
            self.ctx.precision = "bf16-mixed"
            self.autocasts = set(autocasts)
            return
        for call in autocasts:
            self.ctx.left(
                call,
                "the autocast dtype or its on/off switch is decided at run time"
                if not scalers or None in dtypes
                else "autocast together with a hand-written GradScaler",
                "pick the precision once: `Fabric(precision='bf16-mixed' or '16-mixed')`, replace the block's "
                "`with` by `with fabric.autocast():` (or drop it for a model from `fabric.setup`)",
            )

    def with_(self, original, updated):  # type: ignore[no-untyped-def]
        if len(original.items) != 1 or original.items[0].item not in self.autocasts:
            return None
        self.ctx.done(original, "the precision's autocast (Fabric(precision='bf16-mixed'))")
        item = updated.items[0].with_changes(item=cst.Call(func=self.ctx.fabric("autocast")))
        return updated.with_changes(items=[item])

    def call(self, original, updated):  # type: ignore[no-untyped-def]
        func = original.func
        if (
            isinstance(func, cst.Attribute)
            and isinstance(func.value, cst.Name)
            and func.value.value in self.scalers
        ):
            fix = _SCALER_FIX.get(func.attr.value)
            if fix:
                self.ctx.left(original, "a GradScaler call", fix)
        return None
