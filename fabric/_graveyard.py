"""Lightning's removed TPU names: each warns that it is deprecated and names its replacement, as Lightning's do.

Lightning 2.x keeps ``TPUAccelerator``, ``SingleTPUStrategy``, ``TPUPrecision``, ``TPUBf16Precision`` and
``XLABf16Precision`` (and their old module paths) as deprecated subclasses of the XLA classes. A script
still using them gets the same warning here and then the XLA class's behaviour: without torch-xla, a
``ModuleNotFoundError`` naming it. The precisions become fabric's ordinary plugins ('32-true',
'bf16-true'), which is what fabric's XLA strategies take.
"""

from __future__ import annotations

from typing import Any

from fabric.accelerators.xla import INSTALL_HINT, XLAAccelerator, torch_xla_installed
from fabric.precision.precision import Precision
from fabric.precision.true import HalfPrecision
from fabric.strategies.xla_single import SingleXLAStrategy
from fabric.utilities.rank_zero import rank_zero_deprecation


def require_torch_xla(argument: str) -> None:
    """Lightning's error for these names without torch-xla: a ``ModuleNotFoundError`` naming ``torch_xla``."""
    if not torch_xla_installed():
        raise ModuleNotFoundError(
            f"{argument} needs the `torch_xla` package, which is not installed. Install it with: {INSTALL_HINT}."
        )


__all__ = ["SingleTPUStrategy", "TPUAccelerator", "TPUBf16Precision", "TPUPrecision", "XLABf16Precision"]


class SingleTPUStrategy(SingleXLAStrategy):
    """Deprecated: use :class:`~fabric.strategies.SingleXLAStrategy` (``strategy="single_xla"``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        rank_zero_deprecation("The 'single_tpu' strategy is deprecated. Use 'single_xla' instead.")
        require_torch_xla("SingleTPUStrategy")
        super().__init__(*args, **kwargs)


class TPUAccelerator(XLAAccelerator):
    """Deprecated: use :class:`~fabric.accelerators.XLAAccelerator` (``accelerator="tpu"``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        rank_zero_deprecation(
            "The `TPUAccelerator` class is deprecated. Use `fabric.accelerators.XLAAccelerator` instead."
        )
        require_torch_xla("TPUAccelerator")
        super().__init__(*args, **kwargs)


class TPUPrecision(Precision):
    """Deprecated: pass ``precision="32-true"`` with ``accelerator="tpu"``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        rank_zero_deprecation(
            "The `TPUPrecision` class is deprecated. Use `precision='32-true'` on an XLA device instead."
        )
        require_torch_xla("TPUPrecision")


class XLABf16Precision(HalfPrecision):
    """Deprecated: pass ``precision="bf16-true"`` with ``accelerator="tpu"``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        rank_zero_deprecation(
            f"The `{type(self).__name__}` class is deprecated. Use `precision='bf16-true'` on an XLA device instead."
        )
        require_torch_xla(type(self).__name__)
        super().__init__("bf16-true")


class TPUBf16Precision(XLABf16Precision):
    """Deprecated: pass ``precision="bf16-true"`` with ``accelerator="tpu"``."""
