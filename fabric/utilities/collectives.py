"""Collectives over nested collections, and the forms of them that the strategies do not cover.

``Fabric.all_reduce``/``all_gather`` hand a bare tensor straight to the strategy. The rarer forms
(an explicit process group, a raw ``torch.distributed.ReduceOp``, a gather that keeps the autograd
graph) go through ``torch.distributed`` directly here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fabric.utilities.apply import move_to_device

_REDUCE_NAMES = {"sum": "sum", "mean": "mean", "avg": "mean", "max": "max", "min": "min"}


def apply_collective(data: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """Run ``function`` on every tensor in ``data``, in a deterministic order on every process.

    The order matters: each call is a collective, and all processes must issue them in the same
    sequence. ``apply_to_collection`` walks dicts in insertion order and sequences front to back,
    which is the same on every rank as long as the structures are the same.
    """
    if isinstance(data, Tensor):
        return function(data)
    # heavy: lightning_utilities (~35 ms) loads only when used
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(data, Tensor, function)


def convert_to_tensors(data: Any, device: torch.device) -> Any:
    """Python numbers and NumPy arrays in ``data`` as tensors on ``device`` (Lightning's conversion).

    ``bool`` becomes ``uint8`` (NCCL cannot reduce ``bool``), ``int`` becomes ``int32`` and ``float``
    becomes ``float32``, as Lightning converts them, so reduced values have the same dtypes.
    """
    # heavy: lightning_utilities (~35 ms) loads only when used
    from lightning_utilities.core.apply_func import apply_to_collection

    data = apply_to_collection(data, bool, lambda v: torch.tensor(v, dtype=torch.uint8))
    data = apply_to_collection(data, int, lambda v: torch.tensor(v, dtype=torch.int))
    data = apply_to_collection(data, float, lambda v: torch.tensor(v, dtype=torch.float))
    try:
        import numpy as np  # guarded: works without numpy, as torch does
    except ImportError:
        pass
    else:
        data = apply_to_collection(data, np.ndarray, torch.from_numpy)
    return move_to_device(data, device)


def normalize_reduce_op(reduce_op: Any) -> Any:
    """``reduce_op`` as one of our names (``"sum"``, ``"mean"``, ``"max"``, ``"min"``) where it is one.

    A ``torch.distributed.ReduceOp`` with no such name (``PRODUCT``, ``BAND``, ...) is returned as it is.
    """
    if isinstance(reduce_op, str):
        name = _REDUCE_NAMES.get(reduce_op.lower())
        if name is None:
            raise ValueError(
                f"Fabric.all_reduce(reduce_op={reduce_op!r}): allowed 'sum', 'mean' ('avg'), 'max', 'min', or a "
                f"torch.distributed.ReduceOp value."
            )
        return name

    by_op = {
        dist.ReduceOp.SUM: "sum",
        dist.ReduceOp.AVG: "mean",
        dist.ReduceOp.MAX: "max",
        dist.ReduceOp.MIN: "min",
    }
    if isinstance(reduce_op, (dist.ReduceOp.RedOpType, dist.ReduceOp)):
        return by_op.get(reduce_op, reduce_op)  # type: ignore[arg-type]
    raise TypeError(
        f"Fabric.all_reduce(reduce_op={reduce_op!r}): expected a string ('sum', 'mean', 'max', 'min') or a "
        f"torch.distributed.ReduceOp, got {type(reduce_op).__name__}."
    )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def mean_from_sum(summed: Tensor, world_size: int) -> Tensor:
    """The mean of an all-reduced sum, in the dtype of the input, as Lightning computes it.

    An integer (or bool) tensor stays in its dtype, the quotient truncated toward zero: Lightning
    divides the sum and copies the result back into the integer tensor, so ``mean`` of ``[1, 3, 5]``
    and ``[0, 0, 0]`` is ``[0, 1, 2]``, not ``[0.5, 1.5, 2.5]``. ``div(rounding_mode="trunc")``
    gives the same numbers without the round trip through float32, which loses digits above 2**24.
    """
    if torch.is_floating_point(summed) or torch.is_complex(summed):
        return summed / world_size
    if summed.dtype == torch.bool:
        return summed  # a logical or: any process's True stays True, as the float round trip gives
    return torch.div(summed, world_size, rounding_mode="trunc")


def all_reduce_in_group(tensor: Tensor, reduce_op: Any, group: Any | None, world_size: int) -> Tensor:
    """All-reduce ``tensor`` within ``group`` with a name or a ``ReduceOp`` (a copy; the input is kept)."""
    if not _distributed():
        return tensor

    result = tensor.clone()
    if reduce_op == "mean":
        dist.all_reduce(result, op=dist.ReduceOp.SUM, group=group)
        return mean_from_sum(result, dist.get_world_size(group))
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(result, op=ops.get(reduce_op, reduce_op), group=group)
    return result


def all_gather_in_group(tensor: Tensor, group: Any | None, sync_grads: bool, world_size: int) -> Tensor:
    """Stack ``tensor`` from every process of ``group``; with ``sync_grads`` the result is differentiable."""
    if not _distributed():
        return tensor.unsqueeze(0)

    tensor = tensor.contiguous()
    if sync_grads:
        # here, not at the top: importing torch.distributed.nn loads its RPC remote-module machinery, 5-15
        # ms that every process of every distributed run paid while starting, for this one rare call
        from torch.distributed.nn.functional import all_gather

        kwargs = {"group": group} if group is not None else {}
        return torch.stack(all_gather(tensor, **kwargs))
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, tensor, group=group)
    return torch.stack(gathered)
