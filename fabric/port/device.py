"""Device selection and device moves: ``torch.device(...)`` becomes ``fabric.device``.

Only an assignment of a device (``device = torch.device(...)``, or a conditional between such calls)
is rewritten: the name then holds Fabric's device, so every ``.to(device)`` after it stays right
without being touched. ``x.cuda()`` becomes ``x.to(fabric.device)`` (a no-op move on the device Fabric
chose); ``.cuda(i)`` names a device index and is left. Command-line flags that picked the device
(``--no-cuda``...) no longer do, which the report says.
"""

from __future__ import annotations

import libcst as cst

from fabric.port.rules import Rule, kwargs, positional, string_value

_DEVICE_CALLS = ("torch.device", "torch.accelerator.current_accelerator")
_DEVICE_FLAGS = (
    "--accel",
    "--no-cuda",
    "--no_cuda",
    "--cuda",
    "--no-mps",
    "--no_mps",
    "--no-accel",
    "--no_accel",
    "--device",
    "--gpu",
)


class DeviceRule(Rule):
    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.device_converted = False

    def _is_device_value(self, node: cst.BaseExpression) -> bool:
        if isinstance(node, cst.IfExp):
            return self._is_device_value(node.body) and self._is_device_value(node.orelse)
        if isinstance(node, cst.Call) and self.ctx.is_(node.func, *_DEVICE_CALLS):
            first = positional(node)
            return not (first and string_value(first[0].value) == "meta")
        return False

    def _used_as_device_only(self, assign: cst.Assign) -> bool:
        """Whether every read of the assigned name passes it as a device (``.to(device)``, ``device=``,
        a function argument, ``device.type``), where Fabric's device (``cuda:0``) acts as the original
        (``cuda``) did. Text built from it (``f"{device}:{rank}"``), comparisons and the like differ."""
        if len(assign.targets) != 1 or not isinstance(assign.targets[0].target, cst.Name):
            return False
        accesses = self.ctx.accesses(assign.targets[0].target)
        if accesses is None:
            return False
        for node in accesses:
            parent = self.ctx.parent(node)
            if isinstance(parent, cst.Attribute) and parent.value is node and parent.attr.value == "type":
                continue
            as_text = isinstance(parent, cst.FormattedStringExpression)
            if as_text and parent is not None:
                string = self.ctx.parent(parent)  # the f-string
                parent = self.ctx.parent(string) if string is not None else None  # its Arg, if any
            if not isinstance(parent, cst.Arg):
                return False
            call = self.ctx.parent(parent)
            if not isinstance(call, cst.Call) or self.ctx.is_(
                call.func, "builtins.str", "builtins.repr", "builtins.format"
            ):
                return False
            if (as_text or self.ctx.is_(call.func, "builtins.print")) and not self.ctx.is_(
                call.func, "builtins.print"
            ):
                return False  # text built from the device; only printing it is harmless
        return True

    def statement(self, original, updated):  # type: ignore[no-untyped-def]
        body = original.body
        if len(body) != 1 or not isinstance(body[0], cst.Assign) or not self._is_device_value(body[0].value):
            return None
        targets = body[0].targets
        if len(targets) != 1 or not isinstance(targets[0].target, cst.Name):
            self.ctx.left(
                original,
                "the device is kept in an attribute or several names, whose uses the tool does not follow",
                "assign `fabric.device` where the device is passed on, and `fabric.device.type` where its kind "
                "is meant (text such as f'{device}:{rank}' needs neither: Fabric's device carries the index)",
            )
            return None
        if not self._used_as_device_only(body[0]):
            self.ctx.left(
                original,
                "the device is also used as text or compared; Fabric's device carries an index (cuda:0)",
                "use `fabric.device` where a device is passed, and `fabric.device.type` where its kind is meant",
            )
            return None
        assign = updated.body[0]
        assert isinstance(assign, cst.Assign)
        self.ctx.done(original, "the device is the one Fabric picked for this process")
        self.device_converted = True
        return updated.with_changes(body=[assign.with_changes(value=self.ctx.fabric("device"))])

    def call(self, original, updated):  # type: ignore[no-untyped-def]
        func = original.func
        if isinstance(func, cst.Attribute) and func.attr.value == "add_argument" and original.args:
            flag = string_value(original.args[0].value)
            if flag in _DEVICE_FLAGS:
                self.ctx.left(
                    original,
                    f"the option {flag} chose the device; after the port Fabric chooses it",
                    "remove the option, or pass it on as `Fabric(accelerator='cpu')` (or `fabric run "
                    "--accelerator cpu`)",
                )
            return None
        if not isinstance(func, cst.Attribute) or self.ctx.is_(func.value, "torch", "torch.cuda"):
            return None
        if func.attr.value == "cuda":
            extra = set(kwargs(original)) - {"non_blocking"}
            if positional(original) or extra:
                self.ctx.left(
                    original,
                    "`.cuda(...)` with a device index or options other than non_blocking",
                    "drop the index: Fabric gives each process its own device; use `.to(fabric.device)`",
                )
                return None
            self.ctx.done(original, "moved to the device Fabric picked")
            args = [cst.Arg(self.ctx.fabric("device")), *updated.args]
            if len(args) > 1:
                args[0] = args[0].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            return updated.with_changes(func=updated.func.with_changes(attr=cst.Name("to")), args=args)
        single = len(original.args) == 1 and original.args[0].keyword is None
        if func.attr.value == "to" and single and string_value(original.args[0].value) in ("cuda", "mps"):
            self.ctx.done(original, "moved to the device Fabric picked")
            return updated.with_changes(args=[cst.Arg(self.ctx.fabric("device"))])
        return None
