"""Whole-model low or high precision: "64-true", "16-true" and "bf16-true".

Parameters, buffers and floating-point inputs all take the one dtype; outputs are converted back to
float32 so that the user's loss and metric code sees the dtype it was written for.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.nn import Module

from fabric.precision.precision import Precision
from fabric.precision.utils import default_dtype
from fabric.utilities.apply import convert_floating_tensors

_TRUE_DTYPES = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}


class TruePrecision(Precision):
    """Every floating-point parameter, buffer and input in one dtype."""

    converts_input = True
    converts_output = True

    def __init__(self, precision: str) -> None:
        if precision not in _TRUE_DTYPES:
            raise ValueError(
                f"TruePrecision(precision={precision!r}): expected one of {sorted(_TRUE_DTYPES)}."
            )
        self.precision = precision
        self._dtype = _TRUE_DTYPES[precision]

    @property
    def param_dtype(self) -> torch.dtype:
        return self._dtype

    def convert_module(self, module: Module) -> Module:
        return module.to(dtype=self._dtype)

    def module_init_context(self) -> AbstractContextManager:
        return default_dtype(self._dtype)

    def tensor_init_context(self) -> AbstractContextManager:
        return default_dtype(self._dtype)

    def convert_input(self, data: Any) -> Any:
        return convert_floating_tensors(data, self._dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, torch.get_default_dtype())
