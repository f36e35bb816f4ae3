"""The base of multi-process strategies: process group, ranks, collectives."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fabric import lifecycle
from fabric.accelerators.accelerator import Accelerator
from fabric.environments import ClusterEnvironment, detect_environment
from fabric.precision import Precision
from fabric.strategies import hang_report
from fabric.strategies.gloo_interface import VARIABLE as GLOO_VARIABLE
from fabric.strategies.gloo_interface import address_towards, set_gloo_interface
from fabric.strategies.hang_report import STACK_FRAMES, HangWatcher, format_stack
from fabric.strategies.strategy import Strategy
from fabric.utilities.collectives import mean_from_sum
from fabric.utilities.rank_zero import set_global_rank
from fabric.utilities.threads import limit_threads
from fabric.utilities.types import ReduceOp

#: torch's own default for process groups; long because the first collective can wait for slow data loading
DEFAULT_TIMEOUT = timedelta(minutes=30)
_START_METHODS = ("popen", "spawn", "fork", "forkserver")
_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
_MAX_DIMS = 16
#: dtypes gloo refuses ("Invalid scalar type"), and the wider dtype each travels as instead
_GLOO_WIDER = {torch.int16: torch.int32, torch.uint16: torch.int32, torch.uint32: torch.int64}


class CollectiveError(RuntimeError):
    """A collective failed: a process crashed, or did not reach it within the timeout."""


class ParallelStrategy(Strategy):
    """What every multi-process strategy shares: ranks, the process group, collectives.

    Subclasses decide how a model is wrapped (DDP, FSDP2, tensor parallel) and how checkpoints are
    written. ``torch.distributed`` does the communication: gloo on CPU, nccl on CUDA.

    Args:
        start_method: ``"popen"`` re-runs the user's command for each extra process (scripts);
            ``"spawn"`` or ``"fork"`` start processes with multiprocessing and need
            ``fabric.launch(fn)`` (``"fork"`` works from notebooks).
        process_group_backend: ``"gloo"``, ``"nccl"``, ...; default: nccl on CUDA, gloo otherwise.
        timeout: how long a collective waits for the other processes before failing.
    """

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        start_method: str = "popen",
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision)
        if start_method not in _START_METHODS:
            raise ValueError(
                f"{type(self).__name__}(start_method={start_method!r}): allowed {', '.join(_START_METHODS)}."
            )
        if not isinstance(timeout, timedelta):
            raise TypeError(f"{type(self).__name__}(timeout={timeout!r}): pass a datetime.timedelta.")
        self.parallel_devices = parallel_devices
        self.cluster_environment = cluster_environment
        self.num_nodes = 1
        self._process_group_backend = process_group_backend
        self._timeout = timeout
        self.start_method: str | None = start_method
        self._local_rank: int | None = None  # set by the multiprocessing launcher in each child
        self._collectives = 0  # collectives called so far by this process, named in errors
        self._debug_collectives = False  # FABRIC_DEBUG_COLLECTIVES=1, read once at set-up
        # (number, name, args) of the collective this process is in, None between collectives: read by
        # the hang watcher's thread only when another rank asks (see fabric/strategies/hang_report.py)
        self._in_collective: tuple[int, str, tuple] | None = None
        self._hang_watcher: HangWatcher | None = None
        # what `_init_process_group` found in os.environ before publishing the rendezvous, for teardown
        self._environ_before: dict[str, str | None] = {}

    # ------------------------------------------------------------------ configure
    def configure(
        self, parallel_devices: list[torch.device], num_nodes: int, environment: ClusterEnvironment | None
    ) -> None:
        """Learn the topology from the connector (once, in the first process); the connector then picks the launcher."""
        if self.parallel_devices is None:
            self.parallel_devices = parallel_devices
        self.num_nodes = num_nodes
        if environment is not None:
            self.cluster_environment = environment
        if self.cluster_environment is None:
            self.cluster_environment = detect_environment()
        self.cluster_environment.validate_settings(
            num_devices=len(self.parallel_devices), num_nodes=num_nodes
        )

    @property
    def num_processes(self) -> int:
        """Processes on this node."""
        return len(self.parallel_devices) if self.parallel_devices is not None else 0

    @property
    def environment(self) -> ClusterEnvironment:
        if self.cluster_environment is None:
            raise RuntimeError(
                f"{type(self).__name__} was not configured; create it through `Fabric(strategy=...)`."
            )
        return self.cluster_environment

    # ------------------------------------------------------------------- topology
    @property
    def root_device(self) -> torch.device:
        assert self.parallel_devices is not None
        return self.parallel_devices[self.local_rank]

    # Without a cluster environment (a strategy built outside `Fabric` and not configured yet) this is
    # one process of one: rank 0 of world size 1, as Lightning's strategies answer.
    @property
    def local_rank(self) -> int:
        if self._local_rank is not None:
            return self._local_rank
        return self.cluster_environment.local_rank() if self.cluster_environment is not None else 0

    @property
    def node_rank(self) -> int:
        return self.cluster_environment.node_rank() if self.cluster_environment is not None else 0

    @property
    def global_rank(self) -> int:
        return self.cluster_environment.global_rank() if self.cluster_environment is not None else 0

    @property
    def world_size(self) -> int:
        return self.cluster_environment.world_size() if self.cluster_environment is not None else 1

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    def process_group_backend(self) -> str:
        if self._process_group_backend is not None:
            return self._process_group_backend
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    # ---------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        environment = self.environment
        environment.set_world_size(self.num_nodes * self.num_processes)
        environment.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
        set_global_rank(self.global_rank)
        # Processes started by torchrun, SLURM or a launcher: one share of the cores each, unless set.
        limit_threads(self.num_processes)
        self._debug_collectives = os.environ.get("FABRIC_DEBUG_COLLECTIVES", "0") == "1"
        super().setup_environment()
        if not dist.is_initialized():
            self._init_process_group(environment)
        self._start_hang_watcher()

    def _init_process_group(self, environment: ClusterEnvironment) -> None:
        address = environment.main_address
        host = f"[{address}]" if ":" in address else address
        # Across hosts whose name resolves to loopback, gloo must be told its interface (undone at teardown).
        self._environ_before.setdefault(GLOO_VARIABLE, os.environ.get(GLOO_VARIABLE))
        set_gloo_interface(address, self.process_group_backend)
        try:
            dist.init_process_group(
                backend=self.process_group_backend,
                **_rendezvous(host, environment.main_port, self.world_size, self._timeout, self.global_rank),
                world_size=self.world_size,
                rank=self.global_rank,
                timeout=self._timeout,
                device_id=self.root_device if self.root_device.type == "cuda" else None,
            )
        except dist.DistNetworkError as error:
            if self.global_rank != 0 or not _is_listening(address, environment.main_port):
                raise
            raise RuntimeError(_port_taken(address, environment.main_port)) from error
        # Published for code that reads them (Lightning does the same; DeepSpeed, user code that creates its
        # own groups); the launcher already gave them to the processes it started. Undone at teardown.
        for name, value in (("MASTER_ADDR", address), ("MASTER_PORT", str(environment.main_port))):
            self._environ_before.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        # The group is left at exit by `teardown` (registered with fabric.lifecycle by the facade, weakly);
        # this step leaves it even when the Fabric that created it was freed first (a no-op otherwise).
        lifecycle.install()
        _leave_process_group_at_exit()

    def _start_hang_watcher(self) -> None:
        """Answer other ranks' hang reports from now on (one daemon thread; see ``hang_report``)."""
        if self._hang_watcher is not None or self.world_size < 2:
            return
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # a process group without a store (not ours to diagnose)
            return
        address = address_towards(self.environment.main_address) or socket.gethostname()
        host = f"node rank {self.node_rank}, {address}"
        self._hang_watcher = hang_report.watch(store, self.global_rank, self.world_size, self._where, host)
        _leave_process_group_at_exit()  # stops the watcher too, also when the user created the group
        lifecycle.on_failure(self._explain_failure)

    def _explain_failure(self, error: BaseException) -> str | None:
        """The hang report for a communication failure outside fabric's collectives (at exit, as a note).

        Fabric's own collectives (``_run``) put the report in their error. The gradient communication
        of DDP and FSDP runs inside ``loss.backward()``, in torch's C++ code, and a timeout there reaches
        the user as torch's bare error; this adds, before the traceback is printed, which rank was where.
        """
        if self._hang_watcher is None or isinstance(error, CollectiveError):
            return None
        if not isinstance(error, dist.DistBackendError) and not (
            isinstance(error, RuntimeError) and _is_communication_failure(error)
        ):
            return None
        frames = traceback.extract_tb(error.__traceback__)
        if any(f"torch{os.sep}autograd" in frame.filename for frame in frames):
            where = "in backward: the gradient communication that DDP or FSDP runs inside `backward` failed"
        else:
            where = "in a torch.distributed call made outside fabric's collectives"
        stack = "".join(traceback.format_list(frames[-STACK_FRAMES:])).rstrip()
        report = self._hang_watcher.report(where, stack)
        return (
            f"[fabric] rank {self.global_rank} of {self.world_size}: communication failed {where}. Another "
            f"process crashed or did not reach the same point within the timeout ({self._timeout}); every "
            f"process must run the same forward/backward passes and collectives in the same order.\n\n"
            f"Where every rank is now (Python stacks of the main threads, innermost last):\n{report}"
        )

    def _where(self) -> str:
        """What this process is doing, collective-wise, for a hang report (on the watcher's thread)."""
        current = self._in_collective
        if current is None:
            return f"not in a collective (it has called {self._collectives} so far)"
        number, name, args = current
        return f"in collective #{number} (`{name}`, {_describe(args)})"

    # --------------------------------------------------------------- collectives
    def _run(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._collectives += 1  # the only per-call cost outside debug mode: which collective this is
        if self._debug_collectives:
            self._check_same_collective(name, args)
        self._in_collective = (self._collectives, name, args)  # read only when a hang report is asked for
        try:
            return function(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as err:
            if not isinstance(err, dist.DistBackendError) and not _is_communication_failure(err):
                raise  # a local error (bad dtype, bad shape): its own message says it best
            report = self._hang_report()
            raise CollectiveError(
                f"The collective `{name}` failed on rank {self.global_rank} of {self.world_size}: {err}. Another "
                f"process crashed or did not reach `{name}` within the timeout ({self._timeout}). Every process "
                f"must call the same collectives in the same order. This process was in collective "
                f"#{self._collectives} (`{name}`, {_describe(args)}); the stack below shows where. Set "
                f"FABRIC_DEBUG_COLLECTIVES=1 to check before every collective that all processes call the same "
                f"one with the same shapes.{report}"
            ) from err
        finally:
            self._in_collective = None

    def _hang_report(self) -> str:
        """Where every rank is, asked through the store (a few seconds at most); empty without a watcher."""
        if self._hang_watcher is None:
            return ""
        # this rank's stack up to the strategy method that called `_run` (frame 1 is `_run` itself)
        report = self._hang_watcher.report(self._where(), format_stack(sys._getframe(2)))
        return f"\n\nWhere every rank is now (Python stacks of the main threads, innermost last):\n{report}"

    def _check_same_collective(self, name: str, args: tuple) -> None:
        """FABRIC_DEBUG_COLLECTIVES=1: all processes must be about to call the same collective, same shapes."""
        mine = (self._collectives, name, _describe(args))
        everyone: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(everyone, mine)
        except (RuntimeError, dist.DistBackendError) as err:
            raise CollectiveError(
                f"FABRIC_DEBUG_COLLECTIVES: rank {self.global_rank} is about to call collective #{mine[0]} "
                f"(`{name}`, {mine[2]}), and not every process came to compare within the timeout "
                f"({self._timeout}): {err}. A process skipped a collective, or crashed.{self._hang_report()}"
            ) from err
        first = next((rank for rank, theirs in enumerate(everyone) if theirs != everyone[0]), None)
        if first is not None:
            calls = "; ".join(
                f"rank {rank}: #{n} `{call}` ({shapes})" for rank, (n, call, shapes) in enumerate(everyone)
            )
            raise CollectiveError(
                f"FABRIC_DEBUG_COLLECTIVES: the processes disagree on the next collective: rank {first} differs "
                f"from rank 0. {calls}. Every process must call the same collectives, in the same order, with "
                f"tensors of the same shapes."
            )

    def setup_extra_parameters(self, parameters: list[Tensor], optimizer: Any, move: bool = True) -> None:
        """Refused by a strategy that shards the model: the extra parameters would be neither sharded nor
        reduced, an optimizer cannot mix them with sharded ones, and its checkpoint names optimizer state
        by the model's parameter names, which they lack. DDP overrides this and trains them."""
        shapes = ", ".join(str(list(p.shape)) for p in parameters[:3]) + (
            ", ..." if len(parameters) > 3 else ""
        )
        raise ValueError(
            f"Fabric.setup(): {len(parameters)} parameter(s) of {type(optimizer).__name__} (shapes {shapes}) are "
            f"not in the model, and {type(self).__name__} cannot train them: it shards the model's parameters "
            f"and names their optimizer state in checkpoints by their place in the model. Make them part of the "
            f"model (e.g. `model.temperature = nn.Parameter(...)`, or the loss module as a submodule of the "
            f"model) before `fabric.setup`, or use strategy='ddp', which trains them beside the model."
        )

    def all_reduce(self, tensor: Tensor, reduce_op: ReduceOp = "mean") -> Tensor:
        result = tensor.clone()
        carrier = self._carrier(result)
        if reduce_op == "mean":
            # Summed in the tensor's own dtype; an integer mean stays an integer (Lightning's numbers).
            self._run("all_reduce", dist.all_reduce, carrier, op=dist.ReduceOp.SUM)
            return mean_from_sum(carrier, self.world_size).to(result.dtype)
        self._run("all_reduce", dist.all_reduce, carrier, op=_REDUCE_OPS[reduce_op])
        return carrier.to(result.dtype)

    def _carrier(self, tensor: Tensor) -> Tensor:
        """``tensor``, or a wider copy when the backend cannot send its dtype (gloo and int16)."""
        if self.process_group_backend == "gloo" and tensor.dtype in _GLOO_WIDER:
            return tensor.to(_GLOO_WIDER[tensor.dtype])
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor | list[Tensor]:  # type: ignore[override]
        """Stack ``tensor`` from every process; when shapes differ, return a list, one per process."""
        tensor = tensor.contiguous()
        meta = torch.zeros(3 + _MAX_DIMS, dtype=torch.int64, device=tensor.device)
        meta[0] = tensor.dim()
        meta[1] = _dtype_code(tensor.dtype)
        meta[2] = tensor.dim() > _MAX_DIMS
        if tensor.dim() <= _MAX_DIMS:
            meta[3 : 3 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
        metas = [torch.empty_like(meta) for _ in range(self.world_size)]
        self._run("all_gather", dist.all_gather, metas, meta)
        table = torch.stack(metas).cpu()
        # Every process sees the same table, so every process raises alike: no one is left waiting.
        if table[:, 2].any():
            raise ValueError(f"all_gather supports tensors of at most {_MAX_DIMS} dimensions.")
        if (table[:, 0] != table[0, 0]).any() or (table[:, 1] != table[0, 1]).any():
            raise ValueError(
                f"all_gather: the processes passed tensors of different dimensions or dtypes (dims "
                f"{table[:, 0].tolist()}, dtypes {[_DTYPES[i] for i in table[:, 1].tolist()]}). Pass the same "
                f"kind of tensor on every process."
            )
        shapes = [tuple(row[3 : 3 + int(row[0])].tolist()) for row in table]
        carrier = self._carrier(tensor)
        if all(shape == shapes[0] for shape in shapes):
            gathered = [torch.empty_like(carrier) for _ in range(self.world_size)]
            self._run("all_gather", dist.all_gather, gathered, carrier)
            return torch.stack(gathered).to(tensor.dtype)
        # Different shapes: pad to the largest along every dimension, gather, then cut each back.
        max_shape = [max(s[d] for s in shapes) for d in range(tensor.dim())]
        padded = carrier.new_zeros(max_shape)
        padded[tuple(slice(0, n) for n in tensor.shape)] = carrier
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._run("all_gather", dist.all_gather, gathered, padded)
        return [g[tuple(slice(0, n) for n in shape)].to(tensor.dtype) for g, shape in zip(gathered, shapes)]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        container = [obj]
        device = self.root_device if self.process_group_backend == "nccl" else None
        self._run("broadcast", dist.broadcast_object_list, container, src=src, device=device)
        return container[0]

    def barrier(self, name: str | None = None) -> None:
        if not dist.is_initialized():
            return
        if self.process_group_backend == "nccl":
            self._run("barrier", dist.barrier, device_ids=[self.root_device.index])
        else:
            self._run("barrier", dist.barrier)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        flag = torch.tensor(int(decision), device=self.root_device)
        self._run("all_reduce", dist.all_reduce, flag, op=dist.ReduceOp.SUM)
        return bool(flag == self.world_size) if all else bool(flag > 0)

    def gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        self._run("all_gather_object", dist.all_gather_object, gathered, obj)
        return gathered

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        """Leave the process group (see :func:`_leave_process_group`), then undo the environment's changes."""
        super().teardown()
        if self._hang_watcher is not None:
            lifecycle.remove_on_failure(self._explain_failure)
            self._hang_watcher = None  # stopped with the process group, below
        _leave_process_group()
        for name, value in self._environ_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._environ_before.clear()
        if self.cluster_environment is not None:
            self.cluster_environment.teardown()


_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
]


def _describe(args: tuple) -> str:
    """The shapes and dtypes of a collective's tensor arguments, for an error message."""
    parts = []
    for arg in args:
        items = arg if isinstance(arg, (list, tuple)) else [arg]
        for item in items:
            # Only tensors: the objects of broadcast/gather_object legitimately differ between ranks.
            if isinstance(item, Tensor):
                parts.append(f"{tuple(item.shape)} {str(item.dtype).removeprefix('torch.')}")
    return "tensors " + ", ".join(parts) if parts else "no tensors"


def _dtype_code(dtype: torch.dtype) -> int:
    try:
        return _DTYPES.index(dtype)
    except ValueError:
        raise TypeError(f"all_gather does not support tensors of dtype {dtype}.") from None


_COMMUNICATION_FAILURES = (
    "timed out",
    "timeout",
    "connection",
    "closed",
    "reset by peer",
    "broken pipe",
    "socket",
)


def _is_communication_failure(error: BaseException) -> bool:
    message = str(error).lower()
    return any(marker in message for marker in _COMMUNICATION_FAILURES)


def _rendezvous(host: str, port: int, world_size: int, timeout: timedelta, rank: int) -> dict[str, Any]:
    """How ``init_process_group`` meets the others: a tcp:// address, or, after a torchrun restart, a store.

    torchrun's agent keeps one store across restarts (``fabric run --max-restarts``): restarted
    processes would read the previous round's addresses from it and fail to connect. A prefix per
    restart round keeps the rounds apart.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        if rank != 0:
            _wait_until_listening(host.strip("[]"), port, timeout.total_seconds())
        return {"init_method": f"tcp://{host}:{port}"}
    store = dist.TCPStore(host.strip("[]"), port, world_size, is_master=False, timeout=timeout)
    return {"store": dist.PrefixStore(f"fabric/restart_{restart}", store)}


def _is_listening(host: str, port: int) -> bool:
    """Whether some program accepts connections at ``host:port`` now (rank 0's store failed to: another)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _port_taken(address: str, port: int) -> str:
    return (
        f"Rank 0 could not host the rendezvous at {address}:{port} (MASTER_PORT={port}): another program is "
        f"already listening on port {port}. Pick a free port: `fabric run --main-port PORT ...`, or set "
        f"MASTER_PORT=PORT for `python script.py`; or leave both unset, and fabric chooses a free port and "
        f"keeps it reserved while the processes start."
    )


_LISTEN_POLL_SECONDS = 0.01


def _wait_until_listening(host: str, port: int, timeout: float) -> None:
    """Return once rank 0's store accepts connections (or after ``timeout``; torch then reports the failure).

    A store client that arrives before the server listens backs off between its attempts and connects
    0.3-0.9 s after the server is up (measured on torch 2.13); rank 1 usually arrives first, because
    rank 0 has more to do before it listens. A plain connect every 10 ms finds the port open at once.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(_LISTEN_POLL_SECONDS)


_EXIT_MEETING_SECONDS = 10.0
_ARRIVED_KEY = "fabric/exit/arrived"
_LEAVING_KEY = "fabric/exit/leaving"


_leaves_at_exit = False
#: whether gloo's threads may still be freeing works of a group this process used (see `_leave_process_group`)
_gloo_may_be_busy = False


def _leave_process_group_at_exit() -> None:
    """Register :func:`_leave_process_group` as an exit step, once per process (held strongly)."""
    global _leaves_at_exit, _gloo_may_be_busy
    _gloo_may_be_busy = True
    if not _leaves_at_exit:
        _leaves_at_exit = True
        lifecycle.on_exit(_leave_process_group, order=lifecycle.LEAVE_PROCESS_GROUP)


#: how long leaving the process group lets gloo's worker threads finish (see `_leave_process_group`)
_SETTLE_SECONDS = 0.2


def _leave_process_group() -> None:
    """Meet the other processes (a few seconds at most), then destroy the process group.

    Left to interpreter shutdown, gloo's threads can be destroyed while a peer still talks to them,
    and the process aborts ("terminate called without an active exception": seen in 2 of 12 plain
    torchrun runs); meeting the peers first avoids it. The meeting is a counter in the rendezvous
    store with a deadline of our own, not a collective: a collective (even ``monitored_barrier`` on the
    ranks other than 0) waits for the process group's timeout, 30 minutes by default, when a peer is
    dead. After a failure in this process the meeting is skipped: the others are still training and
    would never come; the launcher stops them.
    """
    global _gloo_may_be_busy
    hang_report.stop_watching()  # its thread must be out of the store before the store goes
    if dist.is_available() and dist.is_initialized():
        if not lifecycle.has_failed() and dist.get_world_size() > 1:
            with contextlib.suppress(Exception):  # a peer's store already gone: it has left, so do we
                _meet(dist.distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size())
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    elif not _gloo_may_be_busy:
        return
    # A gloo worker thread destroys each finished work (its tensors hold Python objects) after the work
    # has completed; if the interpreter is already finalizing then, the thread cannot take the GIL and
    # the process aborts ("terminate called without an active exception"; a core dump shows
    # ProcessGroupGloo::runLoop -> ~AsyncWork -> gil_scoped_acquire -> pthread_exit). Raw torch and
    # Lightning runs hit it on a loaded machine even after destroy_process_group. Sleeping releases the
    # GIL and the CPU so that those threads finish while the interpreter is whole. Also when the script
    # destroyed the group itself: it often does so right after its last collective
    # (tests/scripts/exit_after_collective.py).
    time.sleep(_SETTLE_SECONDS)
    _gloo_may_be_busy = False


def _meet(store: dist.Store, rank: int, world_size: int) -> None:
    """A barrier on store counters with our own deadline; rank 0 (usually the store's host) leaves last."""
    deadline = time.monotonic() + _EXIT_MEETING_SECONDS
    store.add(_ARRIVED_KEY, 1)
    while store.add(_ARRIVED_KEY, 0) < world_size and time.monotonic() < deadline:
        time.sleep(0.02)
    if rank != 0:
        store.add(_LEAVING_KEY, 1)
        return
    # The others read the store until they see everyone arrived: keep it up until they have.
    deadline = min(deadline, time.monotonic() + 2.0)
    while store.add(_LEAVING_KEY, 0) < world_size - 1 and time.monotonic() < deadline:
        time.sleep(0.02)
