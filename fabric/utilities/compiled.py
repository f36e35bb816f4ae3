"""``torch.compile``d models in ``fabric.setup``: compile after the strategy wraps, as Lightning does.

A model compiled before ``setup`` is taken apart (the user's module and its dynamo context), the
strategy wraps the user's module (DDP, FSDP2, ...), and the wrapped result is compiled again with the
*same* dynamo context: the same backend, mode and options, with no need to know them and no patch of
``torch.compile``. The user's module stays the one that checkpoints see, so its state dict has no
``_orig_mod.`` prefix.
"""

from __future__ import annotations

from typing import Any

from torch.nn import Module


def is_compiled(module: Module) -> bool:
    """Whether ``module`` is what ``torch.compile(module)`` returns (checked without importing dynamo)."""
    return (
        type(module).__name__ == "OptimizedModule"
        and hasattr(module, "_orig_mod")
        and hasattr(module, "dynamo_ctx")
    )


def unwrap_compiled(module: Module) -> tuple[Module, Any]:
    """``(user's module, dynamo context)`` for a compiled module; ``(module, None)`` otherwise."""
    if not is_compiled(module):
        return module, None
    return module._orig_mod, module.dynamo_ctx  # type: ignore[return-value]


def compile_again(module: Module, dynamo_ctx: Any) -> Module:
    """Compile ``module`` (the strategy's wrapper) with the dynamo context taken from the user's compile."""
    from torch._dynamo.eval_frame import OptimizedModule  # heavy: torch._dynamo (~1 s) loads only when used

    return OptimizedModule(module, dynamo_ctx)
