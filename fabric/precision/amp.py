"""Automatic mixed precision: "16-mixed" and "bf16-mixed" through ``torch.autocast``.

Parameters stay in float32; autocast runs each op in the lower dtype where that is safe. Inputs are
*not* cast up front (autocast casts per op, and casting inputs would change ops that autocast keeps
in float32), so a Fabric loop matches a raw ``torch.autocast`` loop bit for bit. Outputs are
returned as float32. ``"16-mixed"`` scales the loss with a :class:`torch.amp.GradScaler` whose
state is part of every checkpoint the fabric saves.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import LBFGS, Optimizer

from fabric.precision.precision import Precision
from fabric.utilities.apply import convert_floating_tensors

_MIXED_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class MixedPrecision(Precision):
    """Autocast on ``device_type`` with a gradient scaler for float16."""

    has_forward_context = True
    converts_output = True

    def __init__(self, precision: str, device_type: str, scaler: torch.amp.GradScaler | None = None) -> None:
        if precision not in _MIXED_DTYPES:
            raise ValueError(
                f"MixedPrecision(precision={precision!r}): expected one of {sorted(_MIXED_DTYPES)}."
            )
        if scaler is not None and precision == "bf16-mixed":
            raise ValueError(
                "MixedPrecision(precision='bf16-mixed', scaler=...): bfloat16 has the range of float32 and "
                "needs no gradient scaler. Drop the scaler or use precision='16-mixed'."
            )
        self.precision = precision
        self.device_type = device_type
        self._dtype = _MIXED_DTYPES[precision]
        if scaler is None and precision == "16-mixed":
            scaler = torch.amp.GradScaler(device_type)
        self.scaler = scaler

    @property
    def autocast_dtype(self) -> torch.dtype:
        return self._dtype

    def forward_context(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self._dtype)

    def convert_output(self, data: Any) -> Any:
        return convert_floating_tensors(data, torch.get_default_dtype())

    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            tensor = self.scaler.scale(tensor)
        tensor.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if self.scaler is None:
            return optimizer.step(**kwargs)
        if isinstance(optimizer, LBFGS):
            raise TypeError(
                "precision='16-mixed' cannot scale gradients for torch.optim.LBFGS, whose closure calls "
                "backward several times per step. Use precision='bf16-mixed' or '32-true' with LBFGS."
            )
        # GradScaler.step unscales (unless already done), skips the step on inf/nan, then we update.
        result = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return result

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["scaler"])
