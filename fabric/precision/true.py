"""Whole-model low or high precision: "64-true", "16-true" and "bf16-true".

Parameters, buffers and floating-point inputs all take the one dtype; outputs are converted back to
float32 so that the user's loss and metric code sees the dtype it was written for. Inside the forward
pass (and ``Fabric.autocast()``) the default dtype is the precision's, as in Lightning, so a tensor
created there (``torch.zeros(n)``, ``torch.arange(n) * 0.5``) matches the parameters.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.nn import Module

from fabric.precision.precision import Precision
from fabric.precision.utils import DefaultDtype, default_dtype
from fabric.utilities.apply import convert_floating_tensors

_TRUE_DTYPES = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}


class TruePrecision(Precision):
    """Every floating-point parameter, buffer and input in one dtype."""

    converts_input = True
    converts_output = True
    has_forward_context = True

    def __init__(self, precision: str) -> None:
        if precision not in _TRUE_DTYPES:
            raise ValueError(
                f"TruePrecision(precision={precision!r}): expected one of {sorted(_TRUE_DTYPES)}."
            )
        self.precision = precision
        self._dtype = _TRUE_DTYPES[precision]
        self._forward_context = DefaultDtype(self._dtype)

    @property
    def param_dtype(self) -> torch.dtype:
        return self._dtype

    def convert_module(self, module: Module) -> Module:
        # Floating-point tensors only: `module.to(dtype)` would also cast complex buffers, dropping
        # their imaginary part.
        dtype = self._dtype
        return module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)

    def forward_context(self) -> AbstractContextManager:
        return self._forward_context

    def module_init_context(self) -> AbstractContextManager:
        return default_dtype(self._dtype)

    def tensor_init_context(self) -> AbstractContextManager:
        return default_dtype(self._dtype)

    def convert_input(self, data: Any) -> Any:
        return convert_floating_tensors(data, self._dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, torch.get_default_dtype())


class DoublePrecision(TruePrecision):
    """``"64-true"`` under Lightning's class name: ``DoublePrecision()``."""

    def __init__(self) -> None:
        super().__init__("64-true")


class HalfPrecision(TruePrecision):
    """``"16-true"`` or ``"bf16-true"`` under Lightning's class name: ``HalfPrecision("bf16-true")``."""

    def __init__(self, precision: str = "16-true") -> None:
        if precision not in ("16-true", "bf16-true"):
            raise ValueError(
                f"HalfPrecision(precision={precision!r}): expected '16-true' or 'bf16-true'. Use "
                f"DoublePrecision() for '64-true'."
            )
        super().__init__(precision)
