"""Per-step time of 2-process DDP on gloo, every implementation started by ``torchrun --nproc_per_node=2``.

Raw PyTorch wraps the model in ``DistributedDataParallel`` and gives its DataLoader a
``DistributedSampler``; fabric and lightning.fabric use ``Fabric(accelerator="cpu", strategy="ddp",
devices=2)`` with ``setup_dataloaders``. Each implementation is launched once and kept running: rank 0
takes commands from the runner over a local socket and broadcasts them to rank 1. In round r both
models run a chunk of steps on every implementation, the first implementation rotating with r; a chunk
is timed on rank 0 between two barriers.

Until fabric's DDP strategy exists (``Fabric(strategy="ddp")`` raising "not a known strategy"), its row
says "unavailable" instead of failing the run.

Run as a script (under torchrun) this file is the measured program: ``ddp_steps.py IMPL``.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from harness import (
    FABRIC,
    IMPL_KEYS,
    LIGHTNING,
    PYTHON,
    RAW,
    Row,
    Settings,
    Table,
    Unavailable,
    Worker,
    child_env,
    failure_reason,
    free_port,
    log,
    run,
    serve,
)

from cases.steps import MODEL_TITLES

IMPLEMENTATIONS = (RAW, FABRIC, LIGHTNING)
MODELS = ("mlp", "conv")
TARGET = 1.02
TIMEOUT = 180.0
CPU_COLUMN = "CPU time per step, both processes"
_UNIT_CELL = {"us": "{:.0f} µs", "ms": "{:.2f} ms"}


def fabric_ddp_unavailable() -> str | None:
    """Why fabric cannot run DDP here, or None when it can (asked in a fresh process)."""
    probe = (
        "from fabric import Fabric\n"
        "try:\n"
        "    Fabric(accelerator='cpu', strategy='ddp', devices=2)\n"
        "except Exception as error:\n"
        "    print(f'{type(error).__name__}: {error}')\n"
    )
    done = run([PYTHON, "-c", probe], timeout=120, env=child_env())
    if done.returncode != 0 or done.timed_out:
        return f"unavailable: {failure_reason(done)}"
    message = done.stdout.strip()
    if not message:
        return None
    if "not a known strategy" in message:
        return "unavailable: fabric has no 'ddp' strategy yet"
    return f"unavailable: {message.splitlines()[-1][:160]}"


def measure(settings: Settings) -> list[Table]:
    rows = {model: {name: Row(name) for name in IMPLEMENTATIONS} for model in MODELS}
    for model in MODELS:
        rows[model][FABRIC].target = TARGET
    groups: dict[str, Worker] = {}

    def drop(name: str, reason: str) -> None:
        log(f"  DDP {name}: {reason}")
        for model in MODELS:
            rows[model][name].note = rows[model][name].note or reason
        group = groups.pop(name, None)
        if group is not None:
            group.close()

    for name in IMPLEMENTATIONS:
        if not settings.installed(name):
            drop(name, "not installed")
            continue
        if name == FABRIC:
            reason = fabric_ddp_unavailable()
            if reason:
                drop(name, reason)
                continue
        log(f"DDP group: {name}")
        command = [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            __file__,
            IMPL_KEYS[name],
        ]
        try:
            groups[name] = Worker(command, settings.workdir / f"ddp-{IMPL_KEYS[name]}.log")
        except Unavailable as error:
            drop(name, f"unavailable: {error}")

    steps = {"mlp": 40, "conv": 5} if settings.quick else {"mlp": 100, "conv": 10}
    for model in MODELS:
        for name in list(groups):
            try:
                groups[name].request({"cmd": "prepare", "model": model, "steps": steps[model]}, TIMEOUT)
            except Unavailable as error:
                drop(name, f"unavailable: {error}")
    for round_index in range(settings.ddp_rounds):
        log(f"DDP per-step: round {round_index + 1}/{settings.ddp_rounds}")
        for model in MODELS:
            for name in settings.rotation(IMPLEMENTATIONS, round_index):
                if name not in groups:
                    continue
                try:
                    reply = groups[name].request(
                        {"cmd": "run", "model": model, "steps": steps[model]}, TIMEOUT
                    )
                except Unavailable as error:
                    drop(name, f"unavailable: {error}")
                    continue
                rows[model][name].samples.append(reply["seconds_per_step"])
                rows[model][name].cpu_samples.append(reply["cpu_seconds_per_step"])
    for name in list(groups):
        groups.pop(name).close()

    tables = []
    for model in MODELS:
        unit = "us" if model == "mlp" else "ms"
        table_rows = list(rows[model].values())
        for row in table_rows:
            row.samples = [v * (1e6 if unit == "us" else 1e3) for v in row.samples]
            row.cpu_samples = [v * (1e6 if unit == "us" else 1e3) for v in row.cpu_samples]
            cpu = [v for v in row.cpu_samples if v is not None]
            row.extra = {CPU_COLUMN: (_UNIT_CELL[unit].format(statistics.median(cpu)) if cpu else "—")}
        tables.append(
            Table(
                title=f"Per-step time, 2-process DDP (gloo, torchrun): {MODEL_TITLES[model]}, 32-true, DataLoader",
                unit=unit,
                rows=table_rows,
                description=(
                    f"Median over {settings.ddp_rounds} rounds (rotating order) of {steps[model]} steps timed "
                    f"on rank 0, between barriers; one torchrun launch per implementation serves all rounds. "
                    f"Batch 32 per process, 1 thread per process, DistributedSampler. CPU time: user + "
                    f"system time of both processes over the same steps, per step (summed with an all_reduce)."
                ),
                extra_columns=[CPU_COLUMN],
                chart_label=f"DDP {model}",
            )
        )
    return tables


# ------------------------------------------------------------------------------------ measured program
def _main(impl: str) -> None:
    """Rank 0 takes the runner's commands and broadcasts each to rank 1; both ranks run it."""
    import torch
    import torch.distributed as dist

    from cases.common import make_engine, time_steps, time_steps_with_cpu

    engine = make_engine(impl, "32-true", distributed=True)
    prepared = {}

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        if dist.get_rank() == 0:
            dist.broadcast_object_list([command], src=0)
        if command["cmd"] == "prepare":
            prepared[command["model"]] = engine.prepare(command["model"], use_loader=True)
            time_steps(*prepared[command["model"]], command["steps"])
            return {"ok": True}
        if command["cmd"] == "run":
            step, source = prepared[command["model"]]
            dist.barrier()
            wall, cpu = time_steps_with_cpu(step, source, command["steps"])
            dist.barrier()
            # the CPU time of both processes: a busy-waiting rank shows here, not in rank 0's wall time
            total = torch.tensor([cpu], dtype=torch.float64)
            dist.all_reduce(total)
            return {"seconds_per_step": wall, "cpu_seconds_per_step": float(total.item())}
        if command["cmd"] == "quit":
            return {}
        raise ValueError(f"unknown command {command!r}")

    if dist.get_rank() == 0:
        serve(handle, on_quit=lambda: handle({"cmd": "quit"}))
    else:
        while True:
            received: list[Any] = [None]
            dist.broadcast_object_list(received, src=0)
            if received[0]["cmd"] == "quit":
                break
            handle(received[0])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1])
