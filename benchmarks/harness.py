"""What every benchmark case shares: starting subprocesses with a timeout, free ports, and the result tables.

Only the standard library is imported here, so that the runner itself stays cheap and never imports torch
(or a peer) into the process that times the others.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CASES_DIR = BENCH_DIR / "cases"
PYTHON = sys.executable

RAW = "raw PyTorch"
FABRIC = "fabric"
LIGHTNING = "lightning.fabric"
ACCELERATE = "accelerate"
#: the implementation keys the case scripts understand, by the name the report shows
#: raw PyTorch a second time, in the same process as the first: an A/A control whose ratio to raw PyTorch
#: is 1 but for the noise, so its range shows how finely a figure resolves
CONTROL = "raw PyTorch again (A/A control)"
IMPL_KEYS = {
    RAW: "raw",
    CONTROL: "raw-again",
    FABRIC: "fabric",
    LIGHTNING: "lightning",
    ACCELERATE: "accelerate",
}


class Unavailable(Exception):
    """A measurement that cannot be taken here (a peer not installed, a feature not implemented yet)."""


@dataclass
class Settings:
    """How much to measure; ``quick`` is a smoke run that exercises every case in about a minute."""

    quick: bool
    step_rounds: int
    step_seconds: float
    ddp_rounds: int
    import_rounds: int
    launch_rounds: int
    checkpoint_rounds: int
    checkpoint_mb: int
    memory_rounds: int
    peers: dict[str, str | None]  # name -> version, None when not installed
    workdir: Path

    @classmethod
    def make(cls, quick: bool, peers: dict[str, str | None], workdir: Path) -> Settings:
        if quick:
            return cls(True, 2, 0.05, 2, 2, 1, 2, 20, 1, peers, workdir)
        return cls(False, 12, 0.1, 8, 5, 8, 7, 200, 3, peers, workdir)

    def installed(self, name: str) -> bool:
        return name in (RAW, CONTROL, FABRIC) or self.peers.get(name) is not None

    def rotation(self, names: Sequence[str], round_index: int) -> list[str]:
        """``names`` in the order round ``round_index`` runs them: each starts first once in turn."""
        shift = round_index % len(names)
        return list(names[shift:]) + list(names[:shift])


# --------------------------------------------------------------------------------------------- results
@dataclass
class Check:
    """A target on a figure other than the ratio (e.g. extra peak memory as % of the state)."""

    label: str
    value: float | None
    target: float
    unit: str = "%"

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        return "met" if self.value <= self.target else "missed"

    def shown(self) -> str:
        """The value as written: ratios ("x") with two decimals, so 1.024x does not print as 1.0x."""
        if self.value is None:
            return "—"
        return f"{self.value:.2f}{self.unit}" if self.unit == "x" else f"{self.value:.1f}{self.unit}"

    def cell(self) -> str:
        if self.value is None:
            return "n/a"
        return f"{self.shown()} ({self.verdict})"


@dataclass
class Row:
    """One implementation in one table: a value per round (None where that round failed)."""

    name: str
    samples: list[float | None] = field(default_factory=list)
    cpu_samples: list[float | None] = field(default_factory=list)  # CPU time, where measured
    note: str = ""  # why there is no value ("not installed", "unavailable: ...")
    target: float | None = None  # upper bound on the ratio to the reference row, where one applies
    extra: dict[str, Any] = field(default_factory=dict)  # additional columns, already formatted
    checks: list[Check] = field(default_factory=list)
    short: str = ""  # the name in the chart, where ``name`` is long

    @property
    def label(self) -> str:
        return self.short or self.name

    @property
    def values(self) -> list[float]:
        return [v for v in self.samples if v is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class Table:
    """One figure: rows of implementations, compared with the reference row (the first)."""

    title: str
    unit: str  # "us", "ms", "s", "MB"
    rows: list[Row]
    description: str = ""
    extra_columns: list[str] = field(default_factory=list)
    chart_label: str = ""  # short name of this figure in the chart; empty: not charted

    @property
    def reference(self) -> Row:
        return self.rows[0]

    def ratio(self, row: Row) -> float | None:
        """The median over rounds of ``row / reference`` within the same round.

        Pairing by round cancels what changes between rounds on a shared machine (another job starting,
        the CPU clock); without pairs (a round failed) it falls back to the ratio of the medians.
        """
        pairs = _pairs(row.samples, self.reference.samples)
        if pairs and len(pairs) == len(row.values):
            return statistics.median(pairs)
        ref, value = self.reference.median, row.median
        if ref is None or value is None or ref == 0:
            return None
        return value / ref

    def ratio_range(self, row: Row) -> tuple[float, float] | None:
        """Lowest and highest ratio of the rounds, each round against the reference of the same round."""
        pairs = _pairs(row.samples, self.reference.samples)
        return (min(pairs), max(pairs)) if pairs else None

    def cpu_ratio(self, row: Row) -> float | None:
        """Like :meth:`ratio`, on the CPU time of the measured process (blind to time spent preempted)."""
        pairs = _pairs(row.cpu_samples, self.reference.cpu_samples)
        return statistics.median(pairs) if pairs else None

    @property
    def has_cpu_time(self) -> bool:
        return any(row.cpu_samples for row in self.rows)

    def verdict(self, row: Row) -> str:
        ratio = self.ratio(row)
        if row.target is None:
            return ""
        if ratio is None:
            return "n/a"
        return "met" if ratio <= row.target else "missed"


def _pairs(values: list[float | None], references: list[float | None]) -> list[float]:
    return [v / r for v, r in zip(values, references) if v is not None and r is not None and r > 0]


# ----------------------------------------------------------------------------------------- processes
def child_env(pythonpath: bool = True, **extra: str) -> dict[str, str]:
    """The environment of every measured process: one thread, no stray settings of a launcher.

    ``pythonpath`` puts this directory on the path so the case scripts find their helpers; the import
    timings leave it out, so that ``python -c "import torch"`` searches exactly what a user's would.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "LT_", "ACCELERATE_"))}
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    if pythonpath:
        # the package under test is installed in the environment; the benchmark helpers are found here
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def free_port() -> int:
    """A port nobody listens on right now; each launch asks for a new one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    #: user + system CPU seconds of the process and all its descendants that were waited for (a launcher
    #: waits for its workers, so their time is in it); None when the group was killed
    cpu_seconds: float | None = None


def run(
    args: Sequence[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Completed:
    """Run a command to completion in its own process group; kill the whole group after ``timeout``.

    A launcher (torchrun) starts children of its own; killing only the launcher on a timeout would leave
    them holding the port and the CPU while the next measurement runs.
    """
    cpu_before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env if env is not None else child_env(),
        cwd=cwd,
        start_new_session=True,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    seconds = time.perf_counter() - start
    cpu = None if timed_out else _children_cpu() - cpu_before
    return Completed(proc.returncode, out, err, seconds, timed_out, cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


#: a Python exception line (``ValueError: ...``), the cause that torchrun's failure banner hides
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*")


def last_line(text: str, limit: int = 160) -> str:
    """The last exception line of a process's output, else its last non-empty line: a short reason.

    torchrun ends a failed run with its own banner of ``=`` signs and a ``ChildFailedError``; the worker's
    exception, printed above it, is the reason worth reporting.
    """
    # torchrun's banners are lines of "=" or "-" alone: never a reason
    lines = [line.strip() for line in text.strip().splitlines() if line.strip().strip("=-")]
    causes = [line for line in lines if _EXCEPTION_LINE.match(line) and "ChildFailedError" not in line]
    line = causes[-1] if causes else lines[-1] if lines else "no output"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failure_reason(done: Completed) -> str:
    if done.timed_out:
        return f"timed out after {done.seconds:.0f} s"
    return f"exit {done.returncode}: {last_line(done.stderr or done.stdout)}"


def log_failure(what: str, done: Completed, lines: int = 25) -> None:
    """Write the end of a failed process's output to the run's log, so that the cause can be read later."""
    log(f"  {what} failed: {failure_reason(done)}; the end of its output:")
    for line in (done.stderr or done.stdout or "no output").rstrip().splitlines()[-lines:]:
        log(f"    | {line}")


CONTROL_PORT_VARIABLE = "BENCH_CONTROL_PORT"


class Worker:
    """A long-lived child process (or process group) that answers one JSON line per JSON command.

    Keeping one process per implementation lets the rounds alternate between implementations without
    paying an import (or a launch) per measurement, while every implementation still has a process of
    its own. Commands travel over a TCP connection on 127.0.0.1 that the child opens (see :func:`serve`),
    so the child's stdout and stderr stay free for whatever the measured libraries print (they go to
    ``log_path``), and a launcher such as torchrun can sit between the runner and the child.
    """

    def __init__(self, args: Sequence[str], log_path: Path, start_timeout: float = 180.0) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 -- closed in close()
        self._connection: socket.socket | None = None
        self._buffer = b""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        self._proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(**{CONTROL_PORT_VARIABLE: str(port)}),
            start_new_session=True,
        )
        try:
            self._connection = self._accept(listener, start_timeout)
        finally:
            listener.close()
        self.request({"cmd": "ping"}, timeout=start_timeout)

    def _accept(self, listener: socket.socket, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        listener.settimeout(1.0)
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise Unavailable(self._crash_reason())
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            return connection
        self.close()
        raise Unavailable(f"the worker did not start within {timeout:.0f} s")

    def request(self, command: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        if self._connection is None:
            raise Unavailable("the worker was closed")
        try:
            self._connection.sendall((json.dumps(command) + "\n").encode())
        except OSError:
            raise Unavailable(self._crash_reason()) from None
        reply = json.loads(self._read_line(timeout))
        if "error" in reply:
            raise Unavailable(reply["error"])
        return reply

    def _read_line(self, timeout: float) -> str:
        assert self._connection is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise Unavailable(f"no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self._connection], [], [], left)
            if ready:
                chunk = self._connection.recv(65536)
                if not chunk:
                    raise Unavailable(self._crash_reason())
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _crash_reason(self) -> str:
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc)
            self._proc.wait()
        self._log.flush()
        return f"worker exited ({self._proc.returncode}): {last_line(self.log_path.read_text())}"

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.sendall(b'{"cmd": "quit"}\n')
            except OSError:
                pass
            self._connection.close()
            self._connection = None
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc)
            self._proc.wait()
        self._log.close()


def serve(
    handler: Callable[[dict[str, Any]], dict[str, Any]], on_quit: Callable[[], None] | None = None
) -> None:
    """The child side of :class:`Worker`: connect to the runner, answer each command line with one JSON line.

    ``handler`` raising is reported to the runner as an error reply (it marks the case unavailable).
    """
    connection = socket.create_connection(("127.0.0.1", int(os.environ[CONTROL_PORT_VARIABLE])))
    reader = connection.makefile("r")
    writer = connection.makefile("w")
    for line in reader:
        command = json.loads(line)
        if command.get("cmd") == "quit":
            break
        try:
            reply = {"ok": True} if command.get("cmd") == "ping" else handler(command)
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        writer.write(json.dumps(reply) + "\n")
        writer.flush()
    if on_quit is not None:
        on_quit()
    connection.close()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------ interleaved figures
#: the report name of each implementation key a worker replies with
IMPL_NAMES = {key: name for name, key in IMPL_KEYS.items()}


def add_round_times(rows: dict[str, Row], times: dict[str, list[float]]) -> None:
    """Append one round's ``{impl key: [wall, cpu]}`` (a worker's reply) to the rows, by report name."""
    for key, (wall, cpu) in times.items():
        rows[IMPL_NAMES[key]].samples.append(wall)
        rows[IMPL_NAMES[key]].cpu_samples.append(cpu)


def record_changes(changes: dict[str, set[str]], reply: dict[str, Any], label: str) -> None:
    """Merge the process-wide state changes of a worker's reply into ``changes``; log the new ones."""
    for key, changed in reply.get("changes", {}).items():
        name = IMPL_NAMES[key]
        new = set(changed) - changes.get(name, set())
        if new:
            log(f"  {label}{name} changed process-wide state: {'; '.join(sorted(new))}")
        changes.setdefault(name, set()).update(changed)


def changes_summary(changes: dict[str, set[str]]) -> str:
    """Which process-wide settings each implementation changed, by name only (the values are in the log)."""
    return "; ".join(
        f"{name} changes {', '.join(sorted({change.split(': ', 1)[0] for change in found}))}"
        for name, found in changes.items()
        if found
    )
