"""Start the local processes with ``torch.multiprocessing`` (spawn or fork) and run a function in each.

Used by ``"ddp_spawn"`` (spawn: a fresh interpreter per process; the function and its arguments are
pickled) and ``"ddp_fork"``/``"ddp_notebook"`` (fork: works for functions defined in a notebook).
``torch.multiprocessing`` joins the processes, stops all when one fails (after a short grace period,
not its default 30 s), and re-raises the failing process's traceback here. A process whose function
raised leaves at once, without waiting for the others at the end of the run. Rank 0's return value
comes back through a queue.
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from fabric import lifecycle
from fabric.launchers.launcher import Launcher
from fabric.utilities.apply import move_to_device
from fabric.utilities.seed import reset_seed
from fabric.utilities.threads import limit_threads

if TYPE_CHECKING:
    from fabric.strategies.parallel import ParallelStrategy

_POLL_SECONDS = 0.1
#: after one process failed: how long the others get to end by themselves, then after SIGTERM
_GRACE_SECONDS = 2.0


class MultiprocessingLauncher(Launcher):
    """Run ``function`` in ``num_processes`` new processes on this node; return local rank 0's result."""

    requires_function = True

    def __init__(self, strategy: ParallelStrategy, start_method: str = "spawn") -> None:
        if start_method not in mp.get_all_start_methods():
            raise ValueError(
                f"The start method {start_method!r} is not available on this platform (available: "
                f"{mp.get_all_start_methods()}). Use strategy='ddp_spawn' or 'ddp'."
            )
        self._strategy = strategy
        self._start_method = start_method

    @property
    def is_interactive_compatible(self) -> bool:
        return self._start_method == "fork"

    def launch(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        environment = self._strategy.environment
        # Fixed here, before the children exist, so that they all agree on it; written into each child's
        # environment (not this process's: a notebook that launches twice gets a fresh port each time).
        rendezvous = {"MASTER_ADDR": environment.main_address, "MASTER_PORT": str(environment.main_port)}
        context = mp.get_context(self._start_method)
        return_queue = context.SimpleQueue()
        processes = mp.start_processes(
            _run_in_child,
            args=(self._strategy, rendezvous, function, args, kwargs, return_queue),
            nprocs=self._strategy.num_processes,
            start_method=self._start_method,
            join=False,
        )
        # Read the result while waiting: a result larger than the pipe's buffer blocks rank 0 in `put`
        # until it is read, so reading only after the join would wait forever.
        received: list[bytes] = []
        # `join` raises, with the traceback, if one failed
        while not processes.join(timeout=_POLL_SECONDS, grace_period=_GRACE_SECONDS):
            if not received and not return_queue.empty():
                received.append(return_queue.get())
        return pickle.loads(received[0] if received else return_queue.get())


def _run_in_child(
    process_index: int,
    strategy: ParallelStrategy,
    rendezvous: dict[str, str],
    function: Callable,
    args: tuple,
    kwargs: dict[str, Any],
    return_queue: Any,
) -> None:
    os.environ.update(rendezvous)
    strategy._local_rank = process_index
    # Here, not in the parent: the parent (a notebook, say) keeps its own thread count after the run.
    limit_threads(strategy.num_processes)
    reset_seed()
    args, kwargs = _unshare_module_memory((args, kwargs))
    try:
        result = function(*args, **kwargs)
    except BaseException as error:
        # torch.multiprocessing catches the exception itself, so no excepthook runs: say it here, so
        # that leaving the process group skips the meeting with ranks that are still training. The
        # group is left only after torch has reported this traceback (at exit), so that the parent
        # reports this failure, not the others' broken connections.
        lifecycle.mark_failed(error)
        raise
    if process_index == 0:
        # Plain pickle bytes, on the CPU: torch's queue pickler would pass tensors as shared-memory
        # handles, which the parent can no longer open once this process has exited.
        return_queue.put(pickle.dumps(move_to_device(result, torch.device("cpu"))))
    # A forked child ends with `os._exit`, which skips `atexit`: run the exit steps now.
    lifecycle.shutdown()


def _unshare_module_memory(data: Any) -> Any:
    """Give each process its own copy of the parameters and buffers of the modules in ``data``.

    ``spawn`` passes CPU tensors to the children through shared memory, so a model handed to
    ``fabric.launch(fn, model)`` would have one storage for all processes, and every optimizer step
    would write into the others' weights (a race, as Lightning's launcher avoids the same way). Other
    tensors stay shared, as in Lightning. Parameters tied to each other stay tied: a module yields a
    shared parameter once. Under ``fork`` nothing is shared (copy on write), so nothing is copied.
    """
    from lightning_utilities.core.apply_func import apply_to_collection  # lazy: ~35 ms at import

    @torch.no_grad()
    def unshare(module: torch.nn.Module) -> torch.nn.Module:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.device.type == "cpu" and tensor.is_shared():
                tensor.data = tensor.data.clone()
        return module

    return apply_to_collection(data, torch.nn.Module, unshare)
