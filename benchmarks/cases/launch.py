"""Time from starting a 2-process launch to the end of the first training step, wall and CPU.

Two fabric rows against ``torchrun --nproc_per_node=2`` running the same training step written in raw
DDP: ``fabric run`` (``python -m fabric.cli run --accelerator cpu --devices 2 SCRIPT``; on one node it
starts the workers itself, from a process that never imports torch) and ``python SCRIPT`` with
``Fabric(devices=2)`` (the subprocess launcher: rank 0 re-runs the script for rank 1). The runner notes
``time.time()`` just before it starts the launcher; rank 0 of the script writes ``time.time()`` to a file
right after its first optimizer step. The CPU column is user + system time of the launcher and all its
processes. A fresh free port per launch; one launch of each per round, in rotating order. If the CLI
does not work yet, fabric's row says "unavailable".

Run as a script (under a launcher) this file is the measured program: ``launch.py raw|fabric|fabric-subprocess``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from harness import (
    FABRIC,
    PYTHON,
    RAW,
    Row,
    Settings,
    Table,
    child_env,
    failure_reason,
    free_port,
    log,
    log_failure,
    run,
)

TARGET = 1.0
TIMEOUT = 180.0
STAMP_VARIABLE = "BENCH_FIRST_STEP_FILE"
SUBPROCESS = "fabric (subprocess launcher)"
KEYS = {RAW: "raw", FABRIC: "fabric", SUBPROCESS: "fabric-subprocess"}


NPROCS_VARIABLE = "BENCH_LAUNCH_PROCESSES"


def _command(name: str, port: int, nprocs: int = 2) -> list[str]:
    if name == RAW:
        return [
            PYTHON,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nprocs}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            __file__,
            "raw",
        ]
    if name == SUBPROCESS:
        # `python train.py` with Fabric(devices=2): process 0 re-runs the script for process 1
        return [PYTHON, __file__, "fabric-subprocess"]
    return [
        PYTHON,
        "-m",
        "fabric.cli",
        "run",
        "--accelerator",
        "cpu",
        "--devices",
        str(nprocs),
        __file__,
        "fabric",
    ]


#: a failed launch is tried again once, on a new port: one launch that fails for a reason outside the
#: launcher (a port taken between choosing and binding it) must not void a row. Every failure, retried
#: or final, is counted in the row's "failed launches" column and its reason named in the description.
RETRIES = 1
FAILED = "failed launches"


def _launch_with_retry(settings: Settings, name: str, nprocs: int, tag: str, row: Row) -> list[str]:
    """Launch ``name`` with ``nprocs`` processes, adding its time to first step and CPU time to ``row``.

    A failed launch is logged (the end of its output) and run again on a fresh port, at most
    :data:`RETRIES` times; if the last attempt fails too, the row becomes "unavailable" with the reason.
    Returns the reasons of the attempts that failed.
    """
    failures: list[str] = []
    for attempt in range(RETRIES + 1):
        stamp = settings.workdir / f"first-step-{tag}-{KEYS[name]}-{attempt}"
        port = free_port()
        env = child_env(
            **{
                STAMP_VARIABLE: str(stamp),
                NPROCS_VARIABLE: str(nprocs),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        )
        started = time.time()
        done = run(
            _command(name, port, nprocs), timeout=TIMEOUT * max(1, nprocs / 2), env=env, cwd=settings.workdir
        )
        if done.returncode == 0 and not done.timed_out and stamp.exists():
            row.samples.append(float(stamp.read_text()) - started)
            row.cpu_samples.append(done.cpu_seconds)
            return failures
        log_failure(f"launch {name} ({nprocs} processes, attempt {attempt + 1})", done)
        failures.append(failure_reason(done))
    row.note = f"unavailable: {failures[-1]}"
    return failures


def _finish_rows(rows: dict[str, Row], failures: dict[str, list[str]]) -> str:
    """Fill each row's CPU-time and failed-launch cells; the description's sentence on failures ("" if none)."""
    for name, row in rows.items():
        cpu = [value for value in row.cpu_samples if value is not None]
        row.extra = {
            "CPU time, all processes": f"{statistics.median(cpu):.2f} s" if cpu else "—",
            FAILED: str(len(failures[name])),
        }
    named = [f"{rows[name].short or rows[name].name}: {reason}" for name in rows for reason in failures[name]]
    if not named:
        return ""
    return (
        f" Failed launches ({len(named)}; each was run again once on a new port, and a row whose retry "
        f"failed too says 'unavailable'): {'; '.join(named)}."
    )


def measure(settings: Settings) -> list[Table]:
    rows = {
        RAW: Row("raw DDP script, `torchrun --nproc_per_node=2`", short="torchrun"),
        FABRIC: Row("fabric script, `fabric run`", short="fabric run"),
        SUBPROCESS: Row(
            "fabric script with `Fabric(devices=2)`, `python train.py` (subprocess launcher)",
            short="python train.py",
        ),
    }
    rows[FABRIC].target = rows[SUBPROCESS].target = TARGET
    names = [RAW, FABRIC, SUBPROCESS]
    failures: dict[str, list[str]] = {name: [] for name in names}
    for round_index in range(settings.launch_rounds):
        log(f"launch to first step: round {round_index + 1}/{settings.launch_rounds}")
        for name in settings.rotation(names, round_index):
            if not rows[name].note:
                failures[name] += _launch_with_retry(settings, name, 2, str(round_index), rows[name])
    failed = _finish_rows(rows, failures)
    return [
        Table(
            title="Launch to first step, 2 processes (gloo)",
            unit="s",
            rows=list(rows.values()),
            description=(
                f"Median over {settings.launch_rounds} launches each, rotating order: from starting the "
                f"launcher to rank 0 finishing its first training step (tiny MLP, DDP). CPU time: user + "
                f"system time of the launcher and all its processes over the whole run (to their exit), "
                f"from `getrusage(RUSAGE_CHILDREN)`.{failed}"
            ),
            extra_columns=["CPU time, all processes", FAILED],
            chart_label="launch",
        )
    ]


def measure_scaling(settings: Settings) -> list[Table]:
    """Launch to first step against the number of processes (2, 4, 8): how the launchers' cost grows.

    The same three launchers and program as :func:`measure`; one launch of each per round and process
    count, rotating order. On a 2-core machine 4 and 8 processes oversubscribe the cores: the figure is
    the growth of each launcher against torchrun's at the same count, not an absolute time.
    """
    counts = (2, 4) if settings.quick else (2, 4, 8)
    rounds = 1 if settings.quick else max(3, settings.launch_rounds // 2)
    tables = []
    for nprocs in counts:
        rows = {
            RAW: Row(f"raw DDP script, `torchrun --nproc_per_node={nprocs}`", short=f"torchrun {nprocs}p"),
            FABRIC: Row(f"`fabric run --devices {nprocs}`", target=TARGET, short=f"fabric run {nprocs}p"),
            SUBPROCESS: Row(
                f"`python train.py`, `Fabric(devices={nprocs})`", target=TARGET, short=f"script {nprocs}p"
            ),
        }
        names = list(rows)
        failures: dict[str, list[str]] = {name: [] for name in names}
        for round_index in range(rounds):
            log(f"launch scaling, {nprocs} processes: round {round_index + 1}/{rounds}")
            for name in settings.rotation(names, round_index):
                if not rows[name].note:
                    tag = f"{nprocs}-{round_index}"
                    failures[name] += _launch_with_retry(settings, name, nprocs, tag, rows[name])
        failed = _finish_rows(rows, failures)
        tables.append(
            Table(
                title=f"Launch to first step against process count: {nprocs} processes (gloo)",
                unit="s",
                rows=list(rows.values()),
                description=(
                    f"As the 2-process launch figure, {rounds} launches each, rotating order. Read across "
                    f"the process counts: a launcher whose ratio to torchrun grows with the count scales worse."
                    f"{failed}"
                ),
                extra_columns=["CPU time, all processes", FAILED],
                chart_label=f"launch {nprocs}p",
            )
        )
    return tables


# ------------------------------------------------------------------------------------ measured program
def _main(mode: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from cases.common import fixed_batches, make_dataset, make_model, make_optimizer

    torch.set_num_threads(1)
    x, y = fixed_batches(make_dataset("mlp"), 1)[0]
    if mode == "raw":
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo")
        model = DistributedDataParallel(make_model("mlp"))
        optimizer = make_optimizer(model)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        rank = dist.get_rank()
    else:
        from fabric import Fabric

        # under `fabric run` the options come from the command line; run directly, from the script
        devices = int(os.environ.get(NPROCS_VARIABLE, "2"))
        fabric = Fabric() if mode == "fabric" else Fabric(accelerator="cpu", strategy="ddp", devices=devices)
        fabric.launch()
        module = make_model("mlp")
        model, optimizer = fabric.setup(module, make_optimizer(module))
        loss = F.cross_entropy(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        rank = fabric.global_rank
    if rank == 0:
        stamp = time.time()
        with open(os.environ[STAMP_VARIABLE], "w") as file:
            file.write(repr(stamp))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1])
