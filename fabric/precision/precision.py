"""The precision interface and full fp32 precision ("32-true")."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer


class Precision:
    """Which dtypes parameters and activations use, and how gradients are scaled.

    The base class is full precision ("32-true"): every hook is the identity. Subclasses override
    only what they change. The module wrapper reads :attr:`converts_input` and
    :attr:`converts_output` once at setup and skips the conversion entirely when it is a no-op, so a
    precision that does nothing costs nothing per step.
    """

    precision: str = "32-true"
    #: whether :meth:`convert_input` changes anything; read once by the module wrapper
    converts_input: bool = False
    #: whether :meth:`convert_output` changes anything; read once by the module wrapper
    converts_output: bool = False
    #: whether :meth:`forward_context` does anything
    has_forward_context: bool = False
    #: whether gradients from a plain ``loss.backward()`` would be wrong (e.g. unscaled): the optimizer
    #: wrapper then checks, at ``step``, that ``Fabric.backward`` ran (read once, at setup)
    requires_fabric_backward: bool = False
    #: why :attr:`requires_fabric_backward` (the end of the error a plain ``loss.backward()`` gets)
    fabric_backward_reason: str = "so the precision's backward did not run"
    #: number of :meth:`backward` calls so far (counted where :attr:`requires_fabric_backward`)
    backward_calls: int = 0
    #: whether :meth:`optimizer_step` skips a step whose gradients are not finite (so clipping must
    #: not raise on them)
    skips_nonfinite_steps: bool = False

    def convert_module(self, module: Module) -> Module:
        """Cast the parameters and buffers of ``module`` to this precision's parameter dtype."""
        return module

    def module_init_context(self) -> AbstractContextManager:
        """Context in which modules created by ``Fabric.init_module`` get the right dtype directly."""
        return nullcontext()

    def tensor_init_context(self) -> AbstractContextManager:
        """Context in which tensors created by ``Fabric.init_tensor`` get the right dtype directly."""
        return nullcontext()

    def forward_context(self) -> AbstractContextManager:
        """Context the forward pass of a set-up module runs in (e.g. ``torch.autocast``)."""
        return nullcontext()

    def convert_input(self, data: Any) -> Any:
        """Convert the inputs of the forward pass."""
        return data

    def convert_output(self, data: Any) -> Any:
        """Convert the outputs of the forward pass back to what the user's loss code expects."""
        return data

    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        """Run the backward pass of ``tensor`` (scaled, where this precision scales)."""
        tensor.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        """Step ``optimizer`` (skipping the step on overflow, where this precision scales)."""
        return optimizer.step(**kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Divide the gradients of ``optimizer`` by the loss scale, before clipping them."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in checkpoints (e.g. the gradient scaler's); empty when there is none."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype parameters hold after :meth:`convert_module`."""
        return torch.float32

    def teardown(self) -> None:
        """Undo global changes (e.g. the default dtype)."""
