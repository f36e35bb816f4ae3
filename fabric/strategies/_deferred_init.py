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

``torch.nn.init.trunc_normal_``, ``orthogonal_``, ``dirac_`` and ``sparse_`` do nothing on a meta tensor;
their calls are recorded whole (a torch-function mode sees them ask ``tensor.is_meta``) and replayed
by calling them on the real tensor.

Limits (documented in the README): effects outside ATen operations are not replayed. A constructor that
calls ``torch.manual_seed`` or draws from NumPy or Python's ``random`` for a tensor's values, or that
assigns ``param.data = ...``, is not reproduced; use ``empty_init=False`` for such models.

After a sharding strategy has parallelized a meta model, :mod:`fabric.strategies._materialize` gives
each process its shard of those values (from the recording, or from ``reset_parameters`` without one).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map


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
    #: the first logged tensor of each memory region (storage, shape, strides, offset, dtype)
    regions: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)
    ids: set[int] = field(default_factory=set)
    #: every buffer registered during the construction, by (id of its module, name); the modules are kept
    #: alive in ``owners``. A precision's ``convert_module`` replaces a buffer by a cast copy (made outside
    #: the recording): this finds the original, see :meth:`link_cast_buffers`
    buffers: dict[tuple[int, str], Tensor] = field(default_factory=dict)
    owners: list[torch.nn.Module] = field(default_factory=list)

    def add(self, tensors: list[Tensor]) -> None:
        for tensor in tensors:
            if id(tensor) not in self.ids:
                self.ids.add(id(tensor))
                self.keep.append(tensor)
                self.regions.setdefault(_region(tensor), tensor)

    def covers(self, tensors: list[Tensor], module: torch.nn.Module | None = None) -> bool:
        """Whether the given tensors (a module's meta parameters) were created during this construction
        (with ``module``: a buffer may also be a cast copy of one, see :meth:`link_cast_buffers`)."""
        cast = {id(b) for _, b in self.cast_buffers(module)} if module is not None else set()
        return bool(tensors) and all(self.recorded(t) is not None or id(t) in cast for t in tensors)

    def cast_buffers(self, module: torch.nn.Module) -> list[tuple[Tensor, Tensor]]:
        """``(original, cast)`` for each meta buffer of ``module`` that replaced a recorded one of the same
        shape in a dtype conversion (``bf16-true``'s ``convert_module`` casts Llama's float32 ``inv_freq``)."""
        pairs = []
        for owner in module.modules():
            for name, buffer in owner._buffers.items():
                original = self.buffers.get((id(owner), name))
                if (
                    buffer is not None
                    and buffer.is_meta
                    and original is not None
                    and original is not buffer
                    and self.recorded(buffer) is None
                    and original.shape == buffer.shape
                ):
                    pairs.append((original, buffer))
        return pairs

    def link_cast_buffers(self, module: torch.nn.Module) -> None:
        """Log each cast buffer as the cast of its original, after everything else: the replay computes
        the original (``inv_freq`` from ``arange`` in float32) and casts it, as the eager run did."""
        for original, cast in self.cast_buffers(module):
            self.add([cast])
            self.ops.append(_Op(torch.ops.aten._to_copy.default, (original,), {"dtype": cast.dtype}, [cast]))

    def recorded(self, tensor: Tensor) -> Tensor | None:
        """The logged tensor that ``tensor`` is, or is another Python object of (same memory, same view).

        ``nn.Parameter(torch.zeros(n))`` and ``param.data`` are new objects over the memory of a logged
        tensor, made without an ATen operation; a parameter that nothing touches after its creation
        (``transformers``' ``Conv1D`` bias) is known to the log only through that memory.
        """
        if id(tensor) in self.ids:
            return tensor
        return self.regions.get(_region(tensor)) if tensor.is_meta else None

    def alias_if_known(self, tensor: Tensor) -> None:
        """``param.data.normal_()`` acts on an object no operation made, over a logged tensor's memory:
        log it as a view of that tensor first, so that the replay writes into the parameter's memory."""
        if id(tensor) in self.ids:
            return
        logged = self.recorded(tensor)
        if logged is not None:
            self.add([tensor])
            self.ops.append(_Op(torch.ops.aten.alias.default, (logged,), {}, [tensor]))


#: ``torch.nn.init`` functions that return at once on a meta tensor (their work is data-dependent, e.g.
#: the rejection loop of ``trunc_normal_``), so no ATen operation of theirs reaches the dispatch mode
_SKIPPED_ON_META = ("trunc_normal_", "orthogonal_", "dirac_", "sparse_")


class _SkippedInitRecorder(TorchFunctionMode):
    """Record calls of :data:`_SKIPPED_ON_META` functions as whole operations, replayed by calling them.

    They are seen where they ask ``tensor.is_meta`` (a property read that torch-function modes
    receive); the call's arguments are read from the public function's frame.
    """

    def __init__(self, log: InitLog) -> None:
        super().__init__()
        self._log = log
        self._is_meta = torch._C.TensorBase.__dict__["is_meta"]

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if result is True and getattr(func, "__self__", None) is self._is_meta:
            self._record(sys._getframe(1))
        return result

    def _record(self, frame: FrameType | None) -> None:
        while frame is not None and frame.f_globals.get("__name__") == "torch.nn.init":
            name = frame.f_code.co_name
            if name in _SKIPPED_ON_META:
                function = getattr(torch.nn.init, name)
                arguments = {p: frame.f_locals[p] for p in inspect.signature(function).parameters}
                tensor = arguments.pop("tensor")
                self._log.alias_if_known(tensor)
                self._log.add([tensor])
                self._log.ops.append(_Op(function, (tensor,), arguments, [tensor]))
                return
            frame = frame.f_back


class InitRecorder(TorchDispatchMode):
    """Keep every ATen operation run while a model is constructed (see the module docstring)."""

    def __init__(self, device: torch.device, log: InitLog | None = None) -> None:
        super().__init__()
        #: appending to an existing log (see :func:`record_library_init`): its generator states stay
        self._appending = log is not None
        self.log = log if log is not None else InitLog()
        self._device = device
        self._skipped = _SkippedInitRecorder(self.log)

    def __enter__(self) -> InitRecorder:
        if not self._appending:
            self.log.cpu_rng = torch.get_rng_state()
            if self._device.type == "cuda" and torch.cuda.is_available():
                self.log.cuda_rng = torch.cuda.get_rng_state_all()
                self.log.default_dtype = torch.get_default_dtype()
            self._buffer_hook = torch.nn.modules.module.register_module_buffer_registration_hook(
                self._on_buffer
            )
        self._skipped.__enter__()
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._skipped.__exit__(*exc)
        if not self._appending:
            self._buffer_hook.remove()
        if exc[0] is None and not self._appending:
            # Leave the generators where a normal construction leaves them.
            with _generators_at(self.log, self._device, restore=False):
                replay(self.log, self._device, tensors={}, sink=lambda _name, _tensor: None)

    def _on_buffer(self, module: torch.nn.Module, name: str, buffer: Tensor | None) -> None:
        if buffer is not None:
            self.log.owners.append(module)
            self.log.buffers[(id(module), name)] = buffer

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        for tensor in inputs:
            self.log.alias_if_known(tensor)
        self.log.add(inputs)
        self.log.add(outputs)
        self.log.ops.append(_Op(func, args, kwargs, outputs))
        return out


def record_library_init(module: torch.nn.Module, log: InitLog, device: torch.device) -> int:
    """Insert the model library's own weight initialization into ``log`` where construction skipped it.

    ``transformers`` models initialize in ``post_init`` at the end of each ``PreTrainedModel``'s
    ``__init__`` (an inner ``GPT2Model`` first, then the outer ``GPT2LMHeadModel`` for what is left), but
    skip that step when created on the meta device: they expect ``from_pretrained`` to load weights
    next. A model made under ``init_module(empty_init=True)`` would then come out of ``setup`` with each
    layer's default values instead of the model's ``_init_weights`` (GPT-2's ``normal_(std=0.02)``).

    Each such (sub)model's ``initialize_weights()`` is recorded on the meta model and its operations are
    put into the log right after the last operation of that submodel's construction, where its
    ``post_init`` ran in an eager construction. The replay then draws the same random numbers in the
    same order as eager construction: the values are bit-identical. ``transformers`` marks each
    initialized module (``_is_hf_initialized``), so the outer model does not draw for an inner one again.

    Found by duck typing (``transformers`` is never imported): a module with ``_init_weights`` and a
    public ``initialize_weights()``, the ``PreTrainedModel`` protocol. Returns how many were recorded.
    """
    models = [
        m
        for m in module.modules()
        if callable(getattr(m, "initialize_weights", None)) and hasattr(m, "_init_weights")
    ]
    # the model set up is the outermost: its post_init ran last, after everything in the log
    ends = {id(m): len(log.ops) - 1 if m is module else _construction_end(log, m) for m in models}
    # eager order: the submodel whose construction ended first ran its post_init first (inner first)
    models.sort(key=lambda m: (ends[id(m)], len(list(m.modules()))))
    inserted = 0
    for model in models:
        before = len(log.ops)
        with _Untied(module), _Uncast(module, log), InitRecorder(device, log=log), torch.no_grad():
            model.initialize_weights()  # type: ignore[operator]  # duck-typed (see above)
        added = log.ops[before:]
        del log.ops[before:]
        at = ends[id(model)] + 1 + inserted
        log.ops[at:at] = added
        inserted += len(added)
    return len(models)


class _Untied:
    """Give every tied parameter but its first owner a throwaway meta tensor while inits are recorded.

    On the meta device the ties (GPT-2's ``lm_head.weight`` is ``wte.weight``; T5's stacks share
    ``shared.weight``) exist before the recorded init; in an eager construction each module still had
    its own tensor at its ``post_init``, and the tie, made afterwards, kept the first owner's value. So
    the others' inits draw their numbers into tensors that are then dropped: the same here. The ties
    are put back on exit.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self._swaps: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
        seen: set[int] = set()
        for owner in module.modules():
            for name, param in owner._parameters.items():
                if param is None:
                    continue
                if id(param) in seen:
                    self._swaps.append((owner, name, param))
                seen.add(id(param))

    def __enter__(self) -> None:
        for owner, name, param in self._swaps:
            owner._parameters[name] = torch.nn.Parameter(
                torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
            )

    def __exit__(self, *exc: Any) -> None:
        for owner, name, param in self._swaps:
            owner._parameters[name] = param


class _Uncast:
    """Put the recorded originals back in place of cast buffers while inits are recorded: in an eager
    construction the library's init ran before the precision's cast."""

    def __init__(self, module: torch.nn.Module, log: InitLog) -> None:
        cast = {id(c): o for o, c in log.cast_buffers(module)}
        self._swaps = [
            (owner, name, buffer, cast[id(buffer)])
            for owner in module.modules()
            for name, buffer in owner._buffers.items()
            if buffer is not None and id(buffer) in cast
        ]

    def __enter__(self) -> None:
        for owner, name, _, original in self._swaps:
            owner._buffers[name] = original

    def __exit__(self, *exc: Any) -> None:
        for owner, name, buffer, _ in self._swaps:
            owner._buffers[name] = buffer


def _construction_end(log: InitLog, module: torch.nn.Module) -> int:
    """The index of the last logged operation that wrote one of ``module``'s parameters or buffers."""
    keys = {
        id(log.recorded(t)) for t in (*module.parameters(), *module.buffers()) if log.recorded(t) is not None
    }
    last = -1
    for index, op in enumerate(log.ops):
        if any(id(t) in keys for t in op.outputs):
            last = index
    return last


def _region(tensor: Tensor) -> tuple[Any, ...]:
    return (
        tensor.untyped_storage()._cdata,
        tuple(tensor.shape),
        tensor.stride(),
        tensor.storage_offset(),
        tensor.dtype,
    )


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
    log: InitLog,
    device: torch.device,
    tensors: dict[int, str],
    sink: Callable[[str, Tensor], None],
    stats: dict[str, int] | None = None,
) -> None:
    """Run the logged operations on ``device``; ``tensors`` maps ``id(meta tensor)`` to a name for ``sink``.

    A tensor (and every view of it) is kept until the last operation that uses it, then dropped; a
    named one goes to ``sink`` first. Meta tensors that no logged operation created (the objects
    ``nn.Parameter`` wraps around ``torch.empty``) start as uninitialized tensors of the same shape,
    exactly as ``torch.empty`` gives them in a normal construction.

    Memory: a tensor is allocated only at the last operation that overwrites all of it (``normal_``,
    ``zero_``, ``trunc_normal_``, ...), when everything before only wrote to it: a model that runs
    ``reset_parameters`` in its layers and its own ``_init_weights`` at the end holds one full
    parameter at a time, not all of them. The earlier random operations still run, on a scratch
    tensor freed at once, so the random stream stays exact. ``stats["peak"]`` (if given) receives the
    largest number of elements alive at once.
    """
    plan = _plan(log)
    ends: dict[int, list[int]] = {}
    for key, at in plan.last.items():
        ends.setdefault(at, []).append(key)
    root = plan.root
    real: dict[int, Tensor] = {}
    by_root: dict[int, list[int]] = {}
    pending: dict[int, _Op] = {}  # views of a tensor not allocated yet, made when first needed
    named_roots = {root.get(key, key): name for key, name in tensors.items()}

    def remember(key: int, tensor: Tensor) -> None:
        real[key] = tensor
        by_root.setdefault(root.get(key, key), []).append(key)

    def to_real(value: Any) -> Any:
        if isinstance(value, torch.device) and value.type == "meta":
            return device
        if not isinstance(value, Tensor):
            return value
        key = id(value)
        if key not in real:
            if key in pending:
                op = pending.pop(key)
                remember(key, op.func(*tree_map(to_real, op.args), **tree_map(to_real, op.kwargs)))
            elif not value.is_meta:
                return value
            else:
                remember(
                    key, torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=device)
                )
        return real[key]

    # `device` as the default device: a replayed init function's own factory calls (`sparse_`'s
    # `randperm`) must not land on the meta device of an enclosing `init_module` context.
    with torch.no_grad(), device:
        for index, op in enumerate(log.ops):
            dead = plan.dead.get(index)
            if dead == "alias":
                pending[id(op.outputs[0])] = op
                continue
            if dead == "scratch":  # the value is overwritten later: draw the same numbers, then drop them
                meta = op.args[0]
                scratch = torch.empty_strided(meta.shape, meta.stride(), dtype=meta.dtype, device=device)
                op.func(scratch, *tree_map(to_real, op.args[1:]), **tree_map(to_real, op.kwargs))
                continue
            if dead == "drop":
                op.func(*tree_map(to_real, op.args), **tree_map(to_real, op.kwargs))
                continue
            if dead == "skip":
                continue
            args = tree_map(to_real, op.args)
            kwargs = tree_map(to_real, op.kwargs)
            out = op.func(*args, **kwargs)
            real_outputs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
            for meta_out, real_out in zip(op.outputs, real_outputs):
                if id(meta_out) not in real:
                    remember(id(meta_out), real_out)
            if stats is not None:
                live = sum(real[k].numel() for k in by_root if k in real)
                stats["peak"] = max(stats.get("peak", 0), live)
            for key in ends.get(index, ()):
                _finish(key, real, by_root, named_roots, sink)
        for key in list(named_roots):  # named tensors no operation touched: `torch.empty` values
            meta = next((t for t in log.keep if id(t) == key), None)
            if meta is not None:
                sink(named_roots.pop(key), torch.empty(meta.shape, dtype=meta.dtype, device=device))


#: in-place operations that overwrite all of their tensor without reading it, by name
_OVERWRITES = {"normal_", "uniform_", "fill_", "zero_", "random_", "exponential_", "geometric_", "cauchy_"}
_OVERWRITES |= {"log_normal_", "bernoulli_", "trunc_normal_", "orthogonal_", "sparse_", "dirac_"}
_NOT_RANDOM_FACTORIES = {"empty", "empty_strided", "zeros", "ones", "full", "arange"}


@dataclass
class _Plan:
    root: dict[int, int]  # id of a tensor -> id of the tensor whose memory it uses
    last: dict[int, int]  # id of a root -> index of the last op that uses it or a view of it
    dead: dict[int, str]  # index of an op whose result is overwritten later -> "alias", "random" or "skip"


def _plan(log: InitLog) -> _Plan:
    """Liveness of every tensor, and which operations only write values that a later one overwrites."""
    root: dict[int, int] = {}
    last: dict[int, int] = {}
    metas: dict[int, Tensor] = {}
    kinds: list[tuple[str, set[int]]] = []
    for index, op in enumerate(log.ops):
        ins = [t for t in tree_flatten((op.args, op.kwargs))[0] if isinstance(t, Tensor)]
        for t in ins:
            last[root.setdefault(id(t), id(t))] = index
            metas.setdefault(id(t), t)
        aliases = _aliased_inputs(op)
        for position, t in enumerate(op.outputs):
            source = aliases.get(position)
            root.setdefault(id(t), root[id(source)] if source is not None else id(t))
            last[root[id(t)]] = index
            metas.setdefault(id(t), t)
        roots = {root[id(t)] for t in (*ins, *op.outputs)}
        distinct_inputs = {id(t) for t in ins}
        if not ins and len(op.outputs) == 1:
            kind = "factory"
        elif len(ins) == 1 and len(op.outputs) == 1 and 0 in aliases and op.outputs[0] is not ins[0]:
            kind = "alias"
        elif len(distinct_inputs) == 1 and all(t is ins[0] for t in op.outputs) and ins[0] is op.args[0]:
            kind = "self"
        else:
            kind = "other"
        kinds.append((kind, roots))
    # The last full overwrite of each root, if everything touching it before was a write of its own.
    start: dict[int, int] = {}
    for index, (kind, roots) in enumerate(kinds):
        op = log.ops[index]
        if kind == "self" and _name(op) in _OVERWRITES:
            target, (key,) = op.args[0], roots
            base = metas[key]
            if target.numel() == base.numel() and target.storage_offset() == 0:
                start[key] = index
    for index, (kind, roots) in enumerate(kinds):
        for key in roots:
            if key in start and index < start[key] and (kind == "other" or len(roots) > 1):
                del start[key]
    dead: dict[int, str] = {}
    for index, (kind, roots) in enumerate(kinds):
        if len(roots) != 1 or kind == "other":
            continue
        (key,) = roots
        if key not in start or index >= start[key]:
            continue
        if kind == "alias":
            dead[index] = "alias"
        elif kind == "self":  # its result is overwritten; it may still draw random numbers
            dead[index] = "scratch"
        elif _name(log.ops[index]) in _NOT_RANDOM_FACTORIES:
            dead[index] = "skip"
        else:
            dead[index] = "drop"  # a factory that may draw random numbers: run it, keep nothing
    return _Plan(root, last, dead)


def _name(op: _Op) -> str:
    packet = getattr(op.func, "overloadpacket", None)
    return getattr(packet or op.func, "__name__", "")


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
