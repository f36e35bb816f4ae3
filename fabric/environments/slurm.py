"""Processes started by SLURM's ``srun`` (or an ``sbatch`` script that runs one task per process)."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess

from fabric.environments._env import env_int, env_port, mismatch, require_env
from fabric.environments._ports import port_from_job_id
from fabric.environments._scheduled import ScheduledEnvironment

# Job names SLURM gives allocations where the user types commands by hand (`srun --pty bash`,
# `salloc`): there the user runs python once and fabric must launch the processes itself.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def _is_interactive() -> bool:
    """Whether this process was typed by hand in an interactive allocation rather than started by srun.

    Lightning looks at the job name only. But ``salloc`` names every job ``interactive`` (SLURM 22.05),
    also ``salloc -N2 srun python train.py``, whose tasks srun did start: treating them as interactive
    makes every task launch its own processes. A task of an srun step has ``SLURM_STEP_ID``; the command
    salloc runs has none. ``srun --pty bash`` is a step too, marked by ``SLURM_PTY_PORT``: python typed
    in that shell stays interactive, as in Lightning.
    """
    if SLURMEnvironment.job_name() not in _INTERACTIVE_JOB_NAMES:
        return False
    return "SLURM_STEP_ID" not in os.environ or "SLURM_PTY_PORT" in os.environ


_BRACKET_GROUP = re.compile(r"(\[[^\[\]]*\])")


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list such as ``node[001-003,7],gpu-[1-2]-x`` into host names, in order.

    Zero padding is kept (``node[008-010]`` gives ``node008 node009 node010``): the width of a range is
    the width of its first number, as SLURM writes it. Several bracket groups in one name expand as a
    product, the leftmost changing slowest. Implemented here so that reading the first host does not
    need ``scontrol show hostnames``, which is not on the compute nodes of every cluster.

    Example::

        >>> expand_slurm_nodelist("a1,b[2-3],c")
        ['a1', 'b2', 'b3', 'c']
    """
    hosts: list[str] = []
    # Space-separated lists too ("host0 host1", as Lightning accepts).
    for expression in _split_top_level(re.sub(r"\s*,\s*|\s+", ",", nodelist.strip())):
        hosts.extend(_expand_expression(expression, nodelist))
    return hosts


def _parse_error(nodelist: str, reason: str) -> ValueError:
    return ValueError(
        f"Cannot parse the SLURM node list {nodelist!r}: {reason}."
        " Expected comma-separated host names with optional ranges, like 'node[001-003,7],gpu-[1-2]-x'."
    )


def _split_top_level(nodelist: str) -> list[str]:
    """Split at the commas that separate host expressions, not those inside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in nodelist:
        if char == "[":
            depth += 1
            if depth > 1:
                raise _parse_error(nodelist, "nested '['")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise _parse_error(nodelist, "']' without a matching '['")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise _parse_error(nodelist, "'[' without a matching ']'")
    parts.append("".join(current))
    expressions = [part.strip() for part in parts]
    if any(not expression for expression in expressions):
        raise _parse_error(nodelist, "empty host name")
    return expressions


def _expand_expression(expression: str, nodelist: str) -> list[str]:
    """Expand one host expression (no top-level commas) into its host names."""
    choices: list[list[str]] = []
    for piece in _BRACKET_GROUP.split(expression):
        if piece.startswith("["):
            choices.append(_expand_ranges(piece[1:-1], nodelist))
        elif piece:
            choices.append([piece])
    return ["".join(combination) for combination in itertools.product(*choices)]


def _expand_ranges(ranges: str, nodelist: str) -> list[str]:
    """Expand the inside of one bracket group, e.g. ``001-003,7``."""
    numbers: list[str] = []
    for item in ranges.split(","):
        start, sep, end = item.strip().partition("-")
        if not start.isdigit() or (sep and not end.isdigit()):
            raise _parse_error(nodelist, f"{item!r} is not a number or a range 'a-b'")
        if not sep:
            numbers.append(start)
            continue
        first, last = int(start), int(end)
        if first > last:
            raise _parse_error(nodelist, f"range {item!r} counts down")
        width = len(start)
        numbers.extend(f"{number:0{width}d}" for number in range(first, last + 1))
    return numbers


class SLURMEnvironment(ScheduledEnvironment):
    """Every process is a SLURM task started by ``srun``; ranks come from the task's variables.

    ``SLURM_NTASKS`` is the world size, ``SLURM_PROCID`` the global rank, ``SLURM_LOCALID`` the local
    rank and ``SLURM_NODEID`` the node rank. The rendezvous is on the first host of
    ``SLURM_NODELIST`` (the node of task 0), at ``MASTER_PORT`` if set, else at a port derived from
    ``SLURM_JOB_ID``, so that all tasks agree without talking to each other first.

    Example::

        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=2
        srun python train.py  # Fabric(devices=2, num_nodes=2) picks SLURMEnvironment
    """

    _WORLD_SIZE_VARIABLE = "SLURM_NTASKS"
    _GLOBAL_RANK_VARIABLE = "SLURM_PROCID"
    _FIX = "Start the script with `srun python ...` inside the allocation, or do not select SLURMEnvironment."

    def __init__(self, auto_requeue: bool = True, requeue_signal: signal.Signals | None = None) -> None:
        """``auto_requeue``/``requeue_signal`` as in Lightning: read by code that handles the signal SLURM
        sends before the time limit (``#SBATCH --signal=SIGUSR1@90``) and then calls :meth:`requeue`.
        Fabric itself installs no signal handler (neither does Lightning Fabric; its Trainer does)."""
        super().__init__()
        self.auto_requeue = auto_requeue
        if requeue_signal is None and hasattr(signal, "SIGUSR1"):
            requeue_signal = signal.SIGUSR1
        self.requeue_signal = requeue_signal
        self._validate_srun_variables()

    @staticmethod
    def _validate_srun_variables() -> None:
        """Refuse ``--ntasks=N`` (N > 1) without ``--ntasks-per-node``, as Lightning does, with its wording.

        With ``--ntasks`` alone SLURM spreads the tasks over the nodes as it likes, so the tasks on a node
        no longer match ``devices``; the mismatch would show only as a hang in the rendezvous.
        """
        ntasks = env_int("SLURM_NTASKS", "Unset it or correct the #SBATCH options.", default=1)
        if ntasks > 1 and "SLURM_NTASKS_PER_NODE" not in os.environ:
            raise RuntimeError(
                f"You set `--ntasks={ntasks}` in your SLURM bash script, but this variable is not supported."
                f" HINT: Use `--ntasks-per-node={ntasks}` instead (SLURM_NTASKS={ntasks} is set and"
                " SLURM_NTASKS_PER_NODE is not)."
            )

    @staticmethod
    def job_id() -> int | None:
        """``SLURM_JOB_ID`` as an int, or None outside a job (or in an interactive one)."""
        job_id = os.environ.get("SLURM_JOB_ID")
        if job_id is None or _is_interactive():
            return None
        try:
            return int(job_id.split("_")[0])
        except ValueError:
            return None

    @staticmethod
    def job_name() -> str | None:
        return os.environ.get("SLURM_JOB_NAME")

    def requeue(self) -> None:
        """Put this job back in the queue (``scontrol requeue``), from global rank 0 only.

        Call it from your handler of :attr:`requeue_signal` after saving a checkpoint, when
        :attr:`auto_requeue` is set; the requeued job resumes from that checkpoint.
        """
        if not self.auto_requeue or self.global_rank() != 0:
            return
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
        if job_id is not None:
            job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        else:
            job_id = require_env("SLURM_JOB_ID", self._FIX)
        subprocess.run(["scontrol", "requeue", job_id], check=True)

    @property
    def main_address(self) -> str:
        """First host of ``SLURM_NODELIST`` (or ``SLURM_JOB_NODELIST``): SLURM places task 0 there.

        Without either (a hand-made launch that sets the SLURM task variables), ``MASTER_ADDR`` or
        127.0.0.1, as Lightning does.
        """
        for name in ("SLURM_NODELIST", "SLURM_JOB_NODELIST"):
            nodelist = os.environ.get(name)
            if nodelist is None:
                continue
            try:
                return expand_slurm_nodelist(nodelist)[0]
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        """``MASTER_PORT`` if set (to pick a port by hand), else one derived from ``SLURM_JOB_ID``."""
        if "MASTER_PORT" in os.environ:
            return env_port("MASTER_PORT", "Unset it to derive the port from SLURM_JOB_ID.")
        job_id = os.environ.get("SLURM_JOB_ID")
        if job_id is None:
            raise RuntimeError(f"The environment variable SLURM_JOB_ID is not set. {self._FIX}")
        return port_from_job_id(job_id)

    @staticmethod
    def detect() -> bool:
        """True for SLURM tasks, except python typed in an interactive allocation (see ``_is_interactive``).

        In an interactive allocation the user starts python once by hand, so fabric must launch the
        other processes itself, which the local environment does.
        """
        return "SLURM_NTASKS" in os.environ and not _is_interactive()

    def local_rank(self) -> int:
        return env_int("SLURM_LOCALID", self._FIX)

    def node_rank(self) -> int:
        return env_int("SLURM_NODEID", self._FIX)

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """``devices`` must equal ``--ntasks-per-node`` and ``num_nodes`` the allocated node count.

        Each SLURM task drives one device, so more devices than tasks per node would leave devices
        idle and fewer would put two tasks on one device.

        In an interactive allocation (job name ``bash`` or ``interactive``, see ``_is_interactive``) fabric
        launches the processes itself, so the allocation's task counts do not apply: nothing is checked,
        as in Lightning.
        """
        if _is_interactive():
            return
        fix = "Unset it or correct the #SBATCH options."
        if "SLURM_NTASKS_PER_NODE" in os.environ:
            tasks_per_node = env_int("SLURM_NTASKS_PER_NODE", fix)
            if num_devices != tasks_per_node:
                raise mismatch(
                    "devices",
                    num_devices,
                    tasks_per_node,
                    f"SLURM_NTASKS_PER_NODE={tasks_per_node}",
                    f"submit the job with `#SBATCH --ntasks-per-node={num_devices}`.",
                    "the number of tasks per node configured in SLURM"
                    f" `--ntasks-per-node={tasks_per_node}` does not match `devices={num_devices}`",
                )
        for name in ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
            if name in os.environ:
                nodes = env_int(name, fix)
                if num_nodes != nodes:
                    raise mismatch(
                        "num_nodes",
                        num_nodes,
                        nodes,
                        f"{name}={nodes}",
                        f"submit the job with `#SBATCH --nodes={num_nodes}`.",
                        f"the number of nodes configured in SLURM `--nodes={nodes}` does not match"
                        f" `num_nodes={num_nodes}`",
                    )
                break
