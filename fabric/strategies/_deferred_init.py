"""Create a model on the meta device, then give each process its shards with the values a normal
construction would have given, including the model's own initialization.

Why not ``reset_parameters()`` (Lightning's and torchtitan's way): most models initialize themselves in
``__init__`` beyond what ``reset_parameters`` does (GPT's ``self.apply(self._init_weights)`` with
``normal_(std=0.02)``, zeroed biases, scaled residual projections). Calling ``reset_parameters`` after
the fact replaces those values silently and draws random numbers in a different order, so a seeded run
differs from the same run without ``empty_init``.

How: while the model is constructed on the meta device, :class:`InitRecorder` (a dispatch mode) keeps
every ATen operation in order, and the random-number generator states at the start. Meta tensors cost no
memory and draw no random numbers. :func:`replay` runs the same operations again on a real device, from
the same generator states, so every random draw happens in the same order with the same sizes as in a
normal construction: the values are bit-identical. Each tensor lives only from its first to its last
use in the log, so a parameter exists in full only while its own operations run; then ``sink`` takes it
(FSDP copies out this process's shard) and it is freed.

When the construction ends, the log is replayed once without keeping anything, only to leave the
generators where a normal construction leaves them: random numbers drawn after ``init_module`` are the
same as without ``empty_init``.

Limits (documented in the README): effects outside ATen operations are not replayed. A constructor that
calls ``torch.manual_seed`` or draws from NumPy or Python's ``random`` for a tensor's values, or that
assigns ``param.data = ...``, is not reproduced; use ``empty_init=False`` for such models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

_META = torch.device("meta")


@dataclass
class _Op:
    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[Tensor]


@dataclass
class InitLog:
    """What a meta-device construction did: the operations in order and the starting generator states."""

    ops: list[_Op] = field(default_factory=list)
    cpu_rng: Tensor | None = None
    cuda_rng: list[Tensor] | None = None
    default_dtype: torch.dtype = torch.float32
    #: every tensor seen, kept alive so that ``id()`` keys stay unique for the log's lifetime
    keep: list[Tensor] = field(default_factory=list)

    def covers(self, tensors: list[Tensor]) -> bool:
        """Whether the given tensors (a module's meta parameters) were created during this construction."""
        seen = {id(t) for t in self.keep}
        return bool(tensors) and all(id(t) in seen for t in tensors)


class InitRecorder(TorchDispatchMode):
    """Keep every ATen operation run while a model is constructed (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.log = InitLog()
        self._device = device

    def __enter__(self) -> InitRecorder:
        self.log.cpu_rng = torch.get_rng_state()
        if self._device.type == "cuda" and torch.cuda.is_available():
            self.log.cuda_rng = torch.cuda.get_rng_state_all()
        self.log.default_dtype = torch.get_default_dtype()
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if exc[0] is None:
            # Leave the generators where a normal construction leaves them.
            with _generators_at(self.log, self._device, restore=False):
                replay(self.log, self._device, tensors={}, sink=lambda _name, _tensor: None)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        self.log.keep.extend(inputs)
        self.log.keep.extend(outputs)
        self.log.ops.append(_Op(func, args, kwargs, outputs))
        return out


class _GeneratorsAt:
    def __init__(self, log: InitLog, device: torch.device, restore: bool) -> None:
        self._log, self._device, self._restore = log, device, restore

    def __enter__(self) -> None:
        self._saved_cpu = torch.get_rng_state()
        self._saved_cuda = torch.cuda.get_rng_state_all() if self._log.cuda_rng is not None else None
        self._saved_dtype = torch.get_default_dtype()
        assert self._log.cpu_rng is not None
        torch.set_rng_state(self._log.cpu_rng)
        if self._log.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self._log.cuda_rng)
        torch.set_default_dtype(self._log.default_dtype)

    def __exit__(self, *exc: Any) -> None:
        torch.set_default_dtype(self._saved_dtype)
        if self._restore:
            torch.set_rng_state(self._saved_cpu)
            if self._saved_cuda is not None:
                torch.cuda.set_rng_state_all(self._saved_cuda)


def _generators_at(log: InitLog, device: torch.device, restore: bool) -> _GeneratorsAt:
    """Set the generators to the log's starting states; put back the caller's afterwards if ``restore``."""
    return _GeneratorsAt(log, device, restore)


def replay_into(
    log: InitLog, device: torch.device, tensors: dict[int, str], sink: Callable[[str, Tensor], None]
) -> None:
    """Replay ``log`` on ``device``, handing each named tensor to ``sink`` when its last operation ran.

    The caller's generator states are untouched: the replay draws from the log's own starting states.
    """
    with _generators_at(log, device, restore=True):
        replay(log, device, tensors, sink)


def replay(
    log: InitLog, device: torch.device, tensors: dict[int, str], sink: Callable[[str, Tensor], None]
) -> None:
    """Run the logged operations on ``device``; ``tensors`` maps ``id(meta tensor)`` to a name for ``sink``.

    A tensor (and every view of it) is kept until the last operation that uses it, then dropped; a
    named one goes to ``sink`` first. Meta tensors that no logged operation created (the objects
    ``nn.Parameter`` wraps around ``torch.empty``) start as uninitialized tensors of the same shape,
    exactly as ``torch.empty`` gives them in a normal construction.
    """
    root: dict[int, int] = {}  # id of a tensor -> id of the tensor whose memory it uses
    last: dict[int, int] = {}  # id of a root -> index of the last op that uses it or a view of it
    for index, op in enumerate(log.ops):
        ins = [t for t in tree_flatten((op.args, op.kwargs))[0] if isinstance(t, Tensor)]
        for t in ins:
            last[root.setdefault(id(t), id(t))] = index
        aliases = _aliased_inputs(op)
        for position, t in enumerate(op.outputs):
            source = aliases.get(position)
            root.setdefault(id(t), root[id(source)] if source is not None else id(t))
            last[root[id(t)]] = index
    ends: dict[int, list[int]] = {}
    for key, at in last.items():
        ends.setdefault(at, []).append(key)
    real: dict[int, Tensor] = {}
    by_root: dict[int, list[int]] = {}
    named_roots = {root.get(key, key): name for key, name in tensors.items()}

    def to_real(value: Any) -> Any:
        if isinstance(value, torch.device) and value.type == "meta":
            return device
        if not isinstance(value, Tensor):
            return value
        key = id(value)
        if key not in real:
            if not value.is_meta:
                return value
            real[key] = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=device)
            by_root.setdefault(root.get(key, key), []).append(key)
        return real[key]

    with torch.no_grad():
        for index, op in enumerate(log.ops):
            args = tree_map(to_real, op.args)
            kwargs = tree_map(to_real, op.kwargs)
            out = op.func(*args, **kwargs)
            real_outputs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
            for meta_out, real_out in zip(op.outputs, real_outputs):
                if id(meta_out) not in real:
                    real[id(meta_out)] = real_out
                    by_root.setdefault(root.get(id(meta_out), id(meta_out)), []).append(id(meta_out))
            for key in ends.get(index, ()):
                _finish(key, real, by_root, named_roots, sink)
        for key in list(named_roots):  # named tensors no operation touched: `torch.empty` values
            meta = next((t for t in log.keep if id(t) == key), None)
            if meta is not None:
                sink(named_roots.pop(key), torch.empty(meta.shape, dtype=meta.dtype, device=device))


def _finish(
    key: int,
    real: dict[int, Tensor],
    by_root: dict[int, list[int]],
    named_roots: dict[int, str],
    sink: Callable[[str, Tensor], None],
) -> None:
    members = by_root.pop(key, [])
    if key in named_roots and key in real:
        sink(named_roots.pop(key), real[key])
    for member in members:
        real.pop(member, None)


def _aliased_inputs(op: _Op) -> dict[int, Tensor]:
    """Outputs that share memory with an input (views, in-place results), by output position."""
    schema = getattr(op.func, "_schema", None)
    if schema is None:
        return {}
    found: dict[int, Tensor] = {}
    for position, ret in enumerate(schema.returns):
        if ret.alias_info is None or position >= len(op.outputs):
            continue
        sets = ret.alias_info.before_set
        for index, argument in enumerate(schema.arguments):
            if argument.alias_info is None or not (argument.alias_info.before_set & sets):
                continue
            value = op.args[index] if index < len(op.args) else op.kwargs.get(argument.name)
            if isinstance(value, Tensor):
                found[position] = value
                break
    return found
