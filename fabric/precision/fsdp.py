"""Lightning's ``FSDPPrecision``: one plugin naming FSDP's precision, mapped onto FSDP2's mixed-precision policy.

Lightning configures FSDP1 through this plugin's ``mixed_precision_config`` (FSDP1's ``MixedPrecision``
dataclass, kept here for scripts that read it). fabric shards with FSDP2, which takes
:attr:`FSDPPrecision.mixed_precision_policy` instead: the same parameter and reduction dtypes; FSDP2
does not cast buffers, so under a '-true' precision :meth:`convert_module` casts them, as Lightning's
does. Everything else (autocast, the sharded gradient scaler for '16-mixed', the default dtype while
modules are created) is the behaviour of fabric's own plugin for that precision, which this one holds.

Example::

    fabric = Fabric(strategy="fsdp", devices=2, plugins=[FSDPPrecision("bf16-mixed")])
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric.precision.amp import MixedPrecision
from fabric.precision.precision import Precision
from fabric.precision.true import TruePrecision
from fabric.utilities.rank_zero import rank_zero_warn

_PRECISIONS = ("32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")
_LOW_DTYPES = {"16": torch.float16, "bf16": torch.bfloat16, "32": torch.float32}


class FSDPPrecision(Precision):
    """Precision for the FSDP strategy: '32-true', '16-true', 'bf16-true', '16-mixed' or 'bf16-mixed'.

    Args:
        precision: the precision, as for ``Fabric(precision=...)``.
        scaler: a ``torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler`` for '16-mixed'
            (one is created when omitted); other precisions do not scale.
    """

    def __init__(self, precision: str, scaler: Any = None) -> None:
        if precision not in _PRECISIONS:
            raise ValueError(
                f"`precision={precision!r})` is not supported in FSDP. `precision` must be one of: {_PRECISIONS}."
            )
        if scaler is not None and precision != "16-mixed":
            raise ValueError(f"`precision={precision!r}` does not use a scaler, found {scaler}.")
        self.precision = precision
        self._low_dtype = _LOW_DTYPES[precision.split("-")[0]]
        self._plugin: Precision
        if precision.endswith("-mixed"):
            # heavy: torch.distributed.fsdp (~1 s) loads only when used
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            device_type = "cuda" if torch.cuda.is_available() else "cpu"
            if scaler is None and precision == "16-mixed":
                scaler = ShardedGradScaler(device_type)
            self._plugin = MixedPrecision(precision, device_type, scaler)
        elif precision == "32-true":
            self._plugin = Precision()
        else:
            self._plugin = TruePrecision(precision)
        plugin = self._plugin
        self.converts_input = plugin.converts_input
        self.converts_output = plugin.converts_output
        self.has_forward_context = plugin.has_forward_context
        self.requires_fabric_backward = plugin.requires_fabric_backward
        self.skips_nonfinite_steps = plugin.skips_nonfinite_steps

    @property
    def scaler(self) -> Any:
        """The gradient scaler ('16-mixed' only), as Lightning's attribute."""
        return getattr(self._plugin, "scaler", None)

    @scaler.setter
    def scaler(self, scaler: Any) -> None:
        if not isinstance(self._plugin, MixedPrecision):
            raise ValueError(f"`precision={self.precision!r}` does not use a scaler, found {scaler}.")
        self._plugin.scaler = scaler

    @property
    def mixed_precision_policy(self) -> Any:
        """FSDP2's ``MixedPrecisionPolicy`` for this precision: what ``FSDPStrategy`` shards with."""
        # heavy: torch.distributed.fsdp (~1 s) loads only when used
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=self._low_dtype, reduce_dtype=self._low_dtype)

    @property
    def mixed_precision_config(self) -> Any:
        """FSDP1's ``MixedPrecision`` with the same dtypes (Lightning's attribute; FSDP2 ignores ``buffer_dtype``)."""
        # heavy: torch.distributed.fsdp (~1 s) loads only when used
        from torch.distributed.fsdp import MixedPrecision as TorchMixedPrecision

        if self.precision in ("16-true", "bf16-true"):
            rank_zero_warn(
                f"FSDP with `{self.precision}` enables computation in lower precision. "
                "FSDP will always retain a full-precision copy of the model parameters for sharding."
            )
        dtype = self._low_dtype
        return TorchMixedPrecision(param_dtype=dtype, reduce_dtype=dtype, buffer_dtype=dtype)

    @property
    def param_dtype(self) -> torch.dtype:
        return self._plugin.param_dtype

    def convert_module(self, module: Module) -> Module:
        return self._plugin.convert_module(module)

    def module_init_context(self) -> AbstractContextManager:
        return self._plugin.module_init_context()

    def tensor_init_context(self) -> AbstractContextManager:
        return self._plugin.tensor_init_context()

    def forward_context(self) -> AbstractContextManager:
        return self._plugin.forward_context()

    def convert_input(self, data: Any) -> Any:
        return self._plugin.convert_input(data)

    def convert_output(self, data: Any) -> Any:
        return self._plugin.convert_output(data)

    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        self._plugin.backward(tensor, model, *args, **kwargs)
        self.backward_calls = self._plugin.backward_calls

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        return self._plugin.optimizer_step(optimizer, **kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        self._plugin.unscale_gradients(optimizer)

    def state_dict(self) -> dict[str, Any]:
        return self._plugin.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._plugin.load_state_dict(state_dict)

    def teardown(self) -> None:
        self._plugin.teardown()
