"""Precision under DeepSpeed: the engine keeps the parameters in the low dtype and the fp32 master copy.

DeepSpeed does mixed precision itself (its ``fp16``/``bf16`` config sections): the engine casts the
model to the low dtype, keeps float32 master weights inside its ZeRO optimizer and, for float16,
scales the loss dynamically. So this plugin only says which config section to enable and casts the
floating-point inputs to the dtype of the parameters; it neither autocasts nor scales (the engine's
``backward`` does). Outputs are returned as float32, as with every other precision of ours.

``"16-mixed"`` and ``"16-true"`` both mean DeepSpeed's fp16 training; ``"bf16-mixed"`` and
``"bf16-true"`` both mean its bf16 training (there is no autocast mode in DeepSpeed): this is what
Lightning Fabric's DeepSpeed precision does too.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from fabric.precision.precision import Precision
from fabric.precision.utils import default_dtype
from fabric.utilities.apply import convert_floating_tensors

_DTYPES = {
    "32-true": torch.float32,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
}


class DeepSpeedPrecision(Precision):
    """The precision of a DeepSpeed engine: ``"32-true"``, ``"16-mixed"``, ``"bf16-mixed"``, ``"16-true"``, ``"bf16-true"``."""

    def __init__(self, precision: str = "32-true") -> None:
        if precision not in _DTYPES:
            raise ValueError(
                f"DeepSpeedStrategy does not support precision={precision!r}: it is not supported in DeepSpeed. "
                f"`precision` must be one of: "
                f"{', '.join(repr(p) for p in _DTYPES)}. Use another strategy for '64-true'."
            )
        self.precision = precision
        self._dtype = _DTYPES[precision]
        # float32 needs no conversion at all: the wrapper then skips both hooks
        self.converts_input = self._dtype is not torch.float32
        self.converts_output = self._dtype is not torch.float32

    @property
    def param_dtype(self) -> torch.dtype:
        return self._dtype

    def config_section(self) -> dict[str, Any]:
        """The DeepSpeed config entries this precision needs (``{}`` for float32)."""
        if self._dtype is torch.float16:
            return {"fp16": {"enabled": True}}
        if self._dtype is torch.bfloat16:
            return {"bf16": {"enabled": True}}
        return {}

    def convert_module(self, module: Module) -> Module:
        # As Lightning: a '-true' precision casts the model up front; under '-mixed' the engine casts it
        # itself (its fp16/bf16 section) and keeps float32 master weights.
        if self.precision.endswith("-true") and self._dtype is not torch.float32:
            dtype = self._dtype
            return module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
        return module

    def module_init_context(self) -> AbstractContextManager:
        # As Lightning: models are created in the low dtype under '-true' (half the memory of
        # `init_module`), in float32 under '-mixed' (the engine casts them and keeps the master copy).
        return default_dtype(self._dtype if self.precision.endswith("-true") else torch.float32)

    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        """The engine's ``backward`` (it scales the loss under fp16), as Lightning's plugin does."""
        if model is None or not callable(getattr(model, "backward", None)):
            raise TypeError(
                "DeepSpeedPrecision.backward(tensor, model): pass the DeepSpeed engine as `model`; "
                f"got {type(model).__name__}."
            )
        model.backward(tensor, *args, **kwargs)  # type: ignore[operator]  # the engine is a Module with backward

    def tensor_init_context(self) -> AbstractContextManager:
        return default_dtype(self._dtype)

    def convert_input(self, data: Any) -> Any:
        return convert_floating_tensors(data, self._dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, torch.get_default_dtype())
