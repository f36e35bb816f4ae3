"""How many CPU threads each process of a run may use, when several share one machine.

torch starts every process with one intra-op thread per core. With N processes per node that is N
times as many busy threads as cores: they preempt one another and a tensor-parallel run on a small
machine burns several times the CPU for the same steps. So when the user has not chosen
(``OMP_NUM_THREADS`` unset) and more than one process runs on this node, each process gets an equal
share of the cores it may run on: ``max(1, cores // local_processes)``. torchrun sets 1 instead; an
equal share uses a machine with more cores than processes fully (Lightning chooses the same share),
and it is 1 whenever the processes are as many as the cores or more. ``OMP_NUM_THREADS`` set by the
user (or by torchrun, which sets it for its workers) is never overridden.
"""

from __future__ import annotations

import os

_VARIABLE = "OMP_NUM_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a cgroup)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def threads_per_process(local_processes: int) -> int:
    """An equal share of this node's cores for each of ``local_processes`` processes, at least 1."""
    return max(1, usable_cores() // max(1, local_processes))


def limit_threads(local_processes: int) -> int | None:
    """Give this process its share of the cores, unless the user chose or it runs alone on the node.

    Sets ``OMP_NUM_THREADS`` (so that processes started from here inherit the same share) and
    ``torch.set_num_threads`` (torch read the variable when it was imported, before this ran). Returns
    the number of threads set, or ``None`` when nothing was changed.
    """
    if local_processes <= 1 or _VARIABLE in os.environ:
        return None
    import torch  # imports torch: the launcher uses this module without torch

    threads = threads_per_process(local_processes)
    os.environ[_VARIABLE] = str(threads)
    torch.set_num_threads(threads)
    return threads
