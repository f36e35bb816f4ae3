"""Give each process its shards of a model created on the meta device, after a strategy parallelized it.

With a recording of the construction (``init_module(empty_init=True)``, :mod:`fabric.strategies._deferred_init`)
the values are the recorded construction's, bit for bit (:func:`materialize_from_log`); without one
(a model created on the meta device outside ``init_module``) each module's ``reset_parameters()`` gives
them (:func:`materialize`). Either way a full tensor exists only while its own values are produced:
this process's shard is copied out of it (:func:`copy_shard`) and it is freed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module

from fabric.strategies._deferred_init import InitLog, record_library_init, replay_into


def has_meta(module: Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def tensor_names(module: Module, log: InitLog | None = None) -> dict[int, str]:
    """``id`` of each parameter and buffer (before sharding replaces them) -> its qualified name.

    With ``log``, a parameter that wraps a logged tensor no operation touched afterwards is named by
    that tensor's ``id`` too, so that the replay hands its value over.
    """
    names = {id(p): name for name, p in module.named_parameters()}
    names.update({id(b): name for name, b in module.named_buffers()})
    if log is not None:
        for tensor in [*module.parameters(), *module.buffers()]:
            logged = log.recorded(tensor)
            if logged is not None and logged is not tensor:
                names.setdefault(id(logged), names[id(tensor)])
    return names


def take_init_log(logs: list[InitLog], module: Module, device: torch.device) -> InitLog | None:
    """The recording of ``module``'s construction under ``init_module(empty_init=True)``, if any, removed
    from ``logs`` (it is replayed once; its tensors can be freed afterwards) and completed for the replay
    on ``device``: the model library's own initialization that the meta construction skipped, and the casts
    of buffers a precision made before ``setup``."""
    tensors = [*module.parameters(), *module.buffers()]
    for log in logs:
        if log.covers(tensors, module):
            logs.remove(log)
            # a transformers model skipped its own init on the meta device: record it now
            record_library_init(module, log, device)
            log.link_cast_buffers(module)  # bf16-true cast float32 buffers (inv_freq) before setup
            return log
    return None


def materialize_from_log(module: Module, log: InitLog, names: dict[int, str], device: torch.device) -> None:
    """Give each process its shards with the values the recorded construction gives (bit for bit)."""
    module.to_empty(device=device)
    targets = {**dict(module.named_parameters()), **dict(module.named_buffers())}

    def sink(name: str, full: Tensor) -> None:
        if name not in targets:
            raise RuntimeError(
                f"init_module(empty_init=True): the parameter or buffer {name!r} of the constructed model is gone "
                f"after parallelizing (renamed or replaced), so its initial value has nowhere to go. Keep the "
                f"names, or create the model with empty_init=False."
            )
        with torch.no_grad():
            copy_shard(full, targets[name])

    replay_into(log, device, names, sink)


def check_initializable(module: Module) -> None:
    """Every module holding tensors of its own must be able to re-create them (``reset_parameters``)."""
    bad = [
        name or type(module).__name__
        for name, sub in module.named_modules()
        if (any(True for _ in sub.parameters(recurse=False)) or any(True for _ in sub.buffers(recurse=False)))
        and not callable(getattr(sub, "reset_parameters", None))
    ]
    if bad:
        raise TypeError(
            f"init_module(empty_init=True) created the model on the meta device, but {bad} hold parameters or "
            f"buffers and have no `reset_parameters()` to give them values, so they would hold garbage. Add a "
            f"`reset_parameters` method to those modules, or create the model with `empty_init=False`."
        )


def materialize(module: Module, device: torch.device) -> None:
    """Allocate each process's shards and fill them with the values a normal seeded init gives.

    Modules are initialized one at a time, in ``modules()`` order (the order in which a normal
    construction runs their ``reset_parameters``): each module's parameters are created full-size,
    initialized, and this process's shard is copied out; the full tensors are freed before the next
    module, so at most one module's full parameters exist at any time.
    """
    module.to_empty(device=device)
    for sub in module.modules():
        own = dict(sub.named_parameters(recurse=False))
        buffers = dict(sub.named_buffers(recurse=False))
        if not own and not buffers:
            continue
        full = {
            name: torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), p.requires_grad)
            for name, p in own.items()
        }
        originals = {name: sub._parameters[name] for name in own}
        sub._parameters.update(full)  # full-size stand-ins, for the length of reset_parameters
        try:
            sub.reset_parameters()  # type: ignore[operator]
        finally:
            sub._parameters.update(originals)
        with torch.no_grad():
            for name, sharded in originals.items():
                assert sharded is not None
                copy_shard(full[name].detach(), sharded)


def copy_shard(full: Tensor, sharded: Tensor) -> None:
    """Copy this process's part of ``full`` into ``sharded`` (a DTensor on any mesh and placements)."""
    # heavy: torch.distributed.tensor (~1 s) loads only when used
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(sharded, DTensor):
        sharded.copy_(full)
        return
    shape, offset = compute_local_shape_and_global_offset(full.shape, sharded.device_mesh, sharded.placements)
    part = full[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
    sharded.to_local().copy_(part.to(sharded.dtype))
