"""Automatic mixed precision: "16-mixed" and "bf16-mixed" through ``torch.autocast``.

Parameters stay in float32; autocast runs each op in the lower dtype where that is safe. Inputs are
*not* cast up front (autocast casts per op, and casting inputs would change ops that autocast keeps
in float32), so a Fabric loop matches a raw ``torch.autocast`` loop bit for bit. Outputs are
returned as float32. ``"16-mixed"`` scales the loss with a :class:`torch.amp.GradScaler` whose
state is part of every checkpoint the fabric saves.

The scaler is updated once per iteration, not once per optimizer step: with two optimizers stepped
after one backward, both unscale with the same scale (updating after the first, as Lightning does,
halves the scale after an overflow and the second optimizer then applies a doubled gradient). The
update runs at the next ``backward``, or before an optimizer is stepped a second time, or when the
state is saved.
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
    requires_fabric_backward = True

    def __init__(
        self,
        precision: str,
        device_type: str | None = None,
        scaler: torch.amp.GradScaler | None = None,
        *,
        device: str | None = None,
    ) -> None:
        if device_type is None:
            device_type = device  # Lightning's name for it
        elif device is not None and device != device_type:
            raise ValueError(
                f"MixedPrecision(device_type={device_type!r}, device={device!r}): these name the same thing; "
                f"pass one of them."
            )
        if device_type is None:
            raise TypeError(
                "MixedPrecision(precision, device): pass the device type, e.g. device='cuda' or 'cpu'."
            )
        if precision not in _MIXED_DTYPES:
            raise ValueError(
                f"Passed `MixedPrecision(precision={precision!r})`. Precision must be '16-mixed' or 'bf16-mixed'."
            )
        if scaler is not None and precision == "bf16-mixed":
            raise ValueError(
                "MixedPrecision(precision='bf16-mixed', scaler=...): `precision='bf16-mixed'` does not use a scaler: "
                "bfloat16 has the range of float32. Drop the scaler or use precision='16-mixed'."
            )
        self.precision = precision
        self.device_type = device_type
        self._dtype = _MIXED_DTYPES[precision]
        if scaler is None and precision == "16-mixed":
            scaler = torch.amp.GradScaler(device_type)
        self.scaler = scaler
        self.backward_calls = 0
        self._stepped: set[int] = set()  # optimizers stepped since the scaler's last update

    @property
    def skips_nonfinite_steps(self) -> bool:  # type: ignore[override]
        return self.scaler is not None

    @property
    def fabric_backward_reason(self) -> str:  # type: ignore[override]
        if self.scaler is not None:
            return "so the loss was not scaled, and the scaler cannot unscale the gradients"
        # bf16 has float32's range and no scaler: refused anyway, as Lightning refuses it for every mixed
        # precision, so that the same loop keeps working with '16-mixed' or a strategy with its own backward
        return (
            f"{self.precision!r} does not scale the loss, but as in Lightning every mixed precision requires it, so "
            f"that the loop also works with '16-mixed' (which scales) and strategies that run their own backward"
        )

    @property
    def device(self) -> str:
        """The device type autocast runs on (Lightning's attribute name)."""
        return self.device_type

    @property
    def autocast_dtype(self) -> torch.dtype:
        return self._dtype

    def forward_context(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self._dtype)

    def convert_output(self, data: Any) -> Any:
        dtype = torch.get_default_dtype()
        # the usual output, a bare tensor, cast here; `__class__`/`dtype` are attribute reads, not calls,
        # which keeps this per-step path to two calls (issue 23)
        if data.__class__ is Tensor:
            return data.to(dtype) if data.dtype.is_floating_point else data
        return convert_floating_tensors(data, dtype)

    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        self.backward_calls += 1
        if self.scaler is not None:
            if self._stepped:
                self._update_scale()
            tensor = self.scaler.scale(tensor)
        tensor.backward(*args, **kwargs)

    def _update_scale(self) -> None:
        assert self.scaler is not None
        # Skipped when nothing is recorded since the last update (the user called `scaler.update()`).
        if getattr(self.scaler, "_per_optimizer_states", True):
            self.scaler.update()
        self._stepped.clear()

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if self.scaler is None:
            return optimizer.step(**kwargs)
        if isinstance(optimizer, LBFGS):
            raise TypeError(
                "precision='16-mixed' cannot scale gradients for torch.optim.LBFGS, whose closure calls "
                "backward several times per step. Use precision='bf16-mixed' or '32-true' with LBFGS."
            )
        if id(optimizer) in self._stepped:
            self._update_scale()  # a second step of this optimizer: the previous iteration is over
        # GradScaler.step unscales (unless already done) and skips the step on inf/nan; the update of
        # the scale waits for the end of the iteration (see the module docstring).
        result = self.scaler.step(optimizer, **kwargs)
        self._stepped.add(id(optimizer))
        return result

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            if id(optimizer) in self._stepped:
                self._update_scale()
            self.scaler.unscale_(optimizer)

    def state_dict(self) -> dict[str, Any]:
        if self.scaler is None:
            return {}
        if self._stepped:
            self._update_scale()  # the iteration's update, so a resumed run starts from the same scale
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["scaler"])
