"""Moving and converting tensors inside arbitrary nested collections.

Both functions take a fast path for a bare tensor, which is what most models take and return, so
that the common case costs one ``isinstance`` rather than a walk through ``apply_to_collection``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    # non_blocking only helps for host->device copies out of pinned memory; it is safe either way
    return tensor.to(device, non_blocking=device.type == "cuda")


def move_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor in ``data`` (a tensor, module or nested collection) to ``device``."""
    if isinstance(data, Tensor):
        return _to_device(data, device)
    if isinstance(data, torch.nn.Module):
        return data.to(device)
    from lightning_utilities.core.apply_func import apply_to_collection  # lazy: ~35 ms at import

    return apply_to_collection(data, Tensor, _to_device, device)


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Lightning's name: move every tensor (and module) in ``batch`` to ``device``."""
    return move_to_device(batch, torch.device(device) if not isinstance(device, torch.device) else device)


def _convert_floating(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if torch.is_floating_point(tensor) else tensor


def convert_floating_tensors(data: Any, dtype: torch.dtype) -> Any:
    """Cast floating-point tensors in ``data`` to ``dtype``; integer and bool tensors are left alone."""
    if isinstance(data, Tensor):
        return _convert_floating(data, dtype)
    # heavy: lightning_utilities (~35 ms) loads only when used
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(data, Tensor, _convert_floating, dtype)


def _to_scalar(tensor: Tensor) -> Any:
    if tensor.numel() != 1:
        raise ValueError(
            f"convert_tensors_to_scalars: the tensor of shape {tuple(tensor.shape)} does not contain a single element "
            f"({tensor.numel()} elements), so it has no Python number; reduce it first (e.g. `.mean()`)."
        )
    return tensor.item()


def convert_tensors_to_scalars(data: Any) -> Any:
    """Replace every one-element tensor in ``data`` by its Python number (``.item()``); ``data`` is not changed.

    Raises ``ValueError`` for a tensor of more than one element, which has no single number.
    """
    if isinstance(data, Tensor):
        return _to_scalar(data)
    # heavy: lightning_utilities (~35 ms) loads only when used
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(data, Tensor, _to_scalar)
