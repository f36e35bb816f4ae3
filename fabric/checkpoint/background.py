"""Asynchronous saves: a snapshot to CPU memory on the training thread, the write in a background thread.

``Fabric.save(path, state, async_save=True)`` splits a save in two:

* **On the training thread** (the call blocks for this part): everything that needs the training
  process group or the live objects. State dicts are taken (an FSDP full state dict is gathered here),
  the resume state is captured (random states, dataloader positions), and every tensor is copied to
  CPU memory (:func:`snapshot`). When the call returns, training may change the parameters in place:
  the checkpoint holds the values at the call.
* **In a background thread**: the write, the checksums, the manifest and the atomic commit, through
  exactly the code a synchronous save runs (so a crash or SIGKILL mid-write leaves the previous
  checkpoint, and a load verifies every byte, as for a synchronous save). Collectives of a sharded
  write run on a process group of their own (gloo, created once, at the first asynchronous save, by
  every process), never on the training group: the training thread may be in a collective of its
  own at the same moment. A single file is written by global rank 0 with no collective at all.

At most one save is in flight per process. The next save (synchronous or not), load, or
``fabric.wait_for_checkpoint()`` first waits for it, and the processes agree on its outcome, so an
error in the background write is raised on every process at that call instead of being lost; at exit
a pending save is finished before the process group is left, and a failed one makes the process exit
with a non-zero code and the error's message.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from fabric import lifecycle


class AsyncSave:
    """The write of one checkpoint in the background; returned by ``Fabric.save(..., async_save=True)``.

    ``done()`` says whether it has finished; ``wait()`` blocks until it has and raises its error, if it
    failed. Neither talks to other processes. On processes that write nothing (all but global rank 0
    of a single-file save), the handle is finished from the start.

    Example::

        pending = fabric.save("ckpt", state, async_save=True)
        ...  # train on while it is written
        pending.wait()  # optional: the next save or load waits anyway
    """

    def __init__(self, path: str) -> None:
        #: the checkpoint being written
        self.path = path
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._delivered = False  # the error was raised to the user once
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None

    @classmethod
    def nothing_to_write(cls, path: str) -> AsyncSave:
        handle = cls(path)
        handle._finished.set()
        return handle

    def start(self, write: Callable[[], None]) -> None:
        # A daemon thread: the exit step (fabric.lifecycle) waits for it; interpreter shutdown must not
        # join it before that step runs, or a process whose training thread failed could hang there.
        self._thread = threading.Thread(
            target=self._run, args=(write,), name="fabric-async-save", daemon=True
        )
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        _lower_priority()
        try:
            write()
        except BaseException as error:
            self._error = error
        # Callbacks (e.g. the manager's rotation) run before the save counts as finished, so that
        # whoever waits for it also waits for them.
        while True:
            with self._lock:
                callbacks, self._callbacks = self._callbacks, []
                if not callbacks or self._error is not None:
                    self._finished.set()
                    return
            for callback in callbacks:
                _run_callback(callback, self.path)

    def done(self) -> bool:
        """Whether the write has finished (successfully or not)."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the write has finished; raise its error if it failed.

        Raises:
            TimeoutError: it has not finished within ``timeout`` seconds.
        """
        if not self._finished.wait(timeout):
            raise TimeoutError(
                f"The background save of '{self.path}' has not finished within {timeout} s; call wait() again "
                f"or without a timeout."
            )
        if self._error is not None:
            self._delivered = True
            raise self._error

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` once the write has succeeded (in the writer thread, or now if it already has).

        The save counts as done only after its callbacks have run. An error in a callback is printed,
        not raised: the checkpoint itself is complete.
        """
        with self._lock:
            if not self._finished.is_set():
                self._callbacks.append(callback)
                return
        if self._error is None:
            _run_callback(callback, self.path)

    def undelivered_error(self) -> BaseException | None:
        """The write's error, if it failed and no ``wait()`` has raised it yet (call after it finished)."""
        return None if self._delivered else self._error

    def deliver(self) -> BaseException | None:
        """Wait for the write, mark its error as raised, and return it (or ``None``)."""
        self._finished.wait()
        error = self.undelivered_error()
        self._delivered = True
        return error


#: how many nice levels below the training thread the writer thread runs (Linux)
WRITER_NICENESS = 10


def _lower_priority() -> None:
    """Give the writer thread a lower CPU priority than the training thread (Linux only).

    Measured on 2 busy cores (``benchmarks/cases/checkpoint.py``): at the same priority the steps that
    overlap the write took 1.5-2x as long as steps without a save; 10 levels lower they take as long
    as without a save, and the write spreads over more steps instead. The write only needs to end
    before the next save. Linux gives each thread its own nice value; elsewhere a thread id is not a
    valid target (it could name another process), so nothing is changed there.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICENESS))


def _run_callback(callback: Callable[[], None], path: str) -> None:
    try:
        callback()
    except Exception as error:
        print(f"[fabric] after the background save of '{path}': {error!r}", file=sys.stderr, flush=True)


def finish_at_exit(get_pending: Callable[[], AsyncSave | None]) -> Callable[[], None]:
    """An exit step: wait for the pending save; if it failed unnoticed, say so and exit non-zero."""

    def step() -> None:
        pending = get_pending()
        if pending is None:
            return
        error = pending.deliver()
        if error is not None:
            details = "".join(traceback.format_exception_only(type(error), error)).strip()
            print(
                f"[fabric] the background save of '{pending.path}' failed: {details}",
                file=sys.stderr,
                flush=True,
            )
            lifecycle.fail_exit(1)

    return step


# ---------------------------------------------------------------------------------------- snapshot
class _Wrapper(NamedTuple):
    """A DTensor made around a kept buffer, with what it was made from (reused only if all match)."""

    buffer: Tensor
    mesh: Any
    placements: Any
    shape: Any
    stride: Any
    dtensor: Any


class Staging:
    """The CPU copies of one asynchronous save, kept to be copied into by the next one.

    Copying a state into fresh memory is mostly page faults: at 2 processes with 100 MB each, a copy
    into new tensors took 3x as long as a copy into tensors that already existed, and that copy is most
    of what an asynchronous save blocks the training loop for. So the buffers of a snapshot stay
    allocated after its write, and the next snapshot of the same state (the same tensors in the same
    order, shapes and dtypes) copies into them; a tensor that does not match gets a fresh copy. The cost:
    the memory a background write needs while it runs stays held between saves (as DCP's
    ``cache_staged_state_dict=True`` does). A snapshot is only taken after the previous write has
    finished (a save first waits for the one in flight), so no buffer is written while it is read.
    The DTensors that wrap a kept buffer are kept too: wrapping a shard again (``DTensor.from_local``)
    was about 15% of what an asynchronous sharded save blocks for. They hold their device mesh (and so
    its process groups) until :meth:`release`.
    """

    def __init__(self) -> None:
        self._buffers: list[Tensor] = []
        self._wrappers: dict[int, _Wrapper] = {}  # by id(buffer); the entry holds the buffer itself

    def release(self) -> None:
        """Free the kept copies (at teardown)."""
        self._buffers = []
        self._wrappers = {}


def snapshot(obj: Any, staging: Staging | None = None) -> Any:
    """A copy of ``obj`` whose tensors are CPU copies: what the background thread writes.

    Containers (dicts, lists, tuples) are rebuilt, tensors copied to CPU memory (a DTensor keeps its
    mesh and placements, with a copy of this process's shard), other values deep-copied. Tensors that
    are the same view of the same storage (tied weights) stay one copy. The cost is one CPU copy of
    what this process saves; with ``staging``, into the buffers of the previous snapshot where they fit.
    """
    dtensor_type = _dtensor_type()
    copies: dict[Any, Tensor] = {}
    kept = staging._buffers if staging is not None else []
    kept_wrappers = staging._wrappers if staging is not None else {}
    staged: list[Tensor] = []
    wrappers: dict[int, _Wrapper] = {}

    def cpu_copy(tensor: Tensor) -> Tensor:
        index = len(staged)
        buffer = kept[index] if index < len(kept) else None
        if (
            buffer is not None
            and tensor.layout == torch.strided
            and buffer.shape == tensor.shape
            and buffer.dtype == tensor.dtype
            and buffer.stride() == tensor.stride()
        ):
            buffer.copy_(tensor)
        else:
            buffer = tensor.detach().to("cpu", copy=True)
        staged.append(buffer)
        return buffer

    def copy_tensor(tensor: Tensor) -> Tensor:
        if dtensor_type is not None and isinstance(tensor, dtensor_type):
            local = copy_tensor(tensor.to_local())
            mesh, placements, shape, stride = (
                tensor.device_mesh,
                tensor.placements,
                tensor.shape,
                tensor.stride(),
            )
            previous = kept_wrappers.get(id(local))
            if (
                previous is not None
                and previous.buffer is local
                and previous.mesh is mesh
                and (previous.placements, previous.shape, previous.stride) == (placements, shape, stride)
            ):
                wrapped = previous.dtensor
            else:
                wrapped = dtensor_type.from_local(
                    local, mesh, placements, run_check=False, shape=shape, stride=stride
                )
            wrappers[id(local)] = _Wrapper(local, mesh, placements, shape, stride, wrapped)
            return wrapped
        key: Any = id(tensor)
        with contextlib.suppress(Exception):  # tensors without storage (e.g. sparse) are copied as they are
            key = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tensor.stride(),
                tensor.dtype,
                tensor.device,
            )
        if key not in copies:
            copies[key] = cpu_copy(tensor.detach())
        return copies[key]

    def walk(value: Any) -> Any:
        if isinstance(value, Tensor):
            return copy_tensor(value)
        if isinstance(value, OrderedDict):
            return OrderedDict((k, walk(v)) for k, v in value.items())
        if type(value) is dict:
            return {k: walk(v) for k, v in value.items()}
        if type(value) is list:
            return [walk(v) for v in value]
        if type(value) is tuple:
            return tuple(walk(v) for v in value)
        return copy.deepcopy(value)

    with torch.no_grad():
        copied = walk(obj)
    if staging is not None:
        staging._buffers = staged
        staging._wrappers = wrappers
    return copied


def _dtensor_type() -> Any:
    """DTensor, when torch.distributed is importable (only a sharded state holds one)."""
    try:
        # heavy: torch.distributed.tensor (~1 s) loads only when used
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


# ------------------------------------------------------------------------------------- collectives
class GroupCollectives:
    """The collectives the checkpoint pipeline needs, on a process group of its own (all processes).

    The background thread uses these while the training thread may be in a collective of the training
    group; two threads must never share one group.
    """

    def __init__(self, group: Any) -> None:
        self.group = group
        self.global_rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_global_zero = self.global_rank == 0

    @classmethod
    def create(cls) -> GroupCollectives:
        """A new gloo group of every process; every process must call this, at the same point."""

        return cls(dist.new_group(backend="gloo"))

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        container = [obj]
        dist.broadcast_object_list(container, src=src, group=self.group)
        return container[0]

    def barrier(self, name: str | None = None) -> None:
        dist.barrier(group=self.group)

    def gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered


class SingleProcess:
    """The pipeline's collectives when this process is the only one and no process group exists."""

    group = None
    global_rank = 0
    world_size = 1
    is_global_zero = True

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        pass

    def gather_object(self, obj: Any) -> list[Any]:
        return [obj]


__all__ = ["AsyncSave", "GroupCollectives", "SingleProcess", "Staging", "finish_at_exit", "snapshot"]
