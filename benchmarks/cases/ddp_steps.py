"""Per-step time of 2-process DDP on gloo: raw DDP, fabric and lightning.fabric in the same two processes.

One ``torchrun --nproc_per_node=2`` group hosts every implementation: raw PyTorch creates the default
process group (``init_process_group("gloo")``) and wraps its model in ``DistributedDataParallel`` with a
``DistributedSampler``; fabric's and Lightning's ``strategy="ddp"`` find the group already initialised and
use it (both skip their own ``init_process_group`` then), each wrapping its own model in its own DDP. Rank 0
takes the runner's commands over a local socket and broadcasts them to rank 1.

Like ``steps.py``, a round of one model prepares every implementation afresh (new model, optimizer and
wrapped loader over one shared dataset), warms each up, then times them in short interleaved blocks of
the same number of steps (``BLOCK_SECONDS`` of raw DDP), taking turns, the first rotating from block to
block; a barrier (untimed) precedes each block, and each block is timed on rank 0. The CPU time of both
processes over the same blocks is summed with an all_reduce.

Run as a script (under torchrun) this file is the measured program: ``ddp_steps.py IMPL [IMPL ...]``.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from harness import (
    CONTROL,
    FABRIC,
    IMPL_KEYS,
    IMPL_NAMES,
    LIGHTNING,
    PYTHON,
    RAW,
    Row,
    Settings,
    Table,
    Unavailable,
    Worker,
    add_round_times,
    changes_summary,
    free_port,
    log,
    record_changes,
    serve,
)

from cases.steps import BLOCK_SECONDS, MODEL_TITLES, WARM_BLOCKS, block_steps_for, blocks_for

IMPLEMENTATIONS = (RAW, CONTROL, FABRIC, LIGHTNING)
MODELS = ("mlp", "conv")
TARGET = 1.02
TIMEOUT = 300.0
CPU_COLUMN = "CPU time per step, both processes"
_UNIT_CELL = {"us": "{:.0f} µs", "ms": "{:.2f} ms"}
#: steps (the same on both ranks) that size the blocks: warm-up, then timed, of raw DDP
CALIBRATION_STEPS = {"mlp": (20, 60), "conv": (3, 8)}


def measure(settings: Settings) -> list[Table]:
    rows = {model: {name: Row(name) for name in IMPLEMENTATIONS} for model in MODELS}
    for model in MODELS:
        rows[model][FABRIC].target = TARGET
        rows[model][CONTROL].short = "raw again (A/A)"
    block_steps: dict[str, int] = {}
    changes: dict[str, set[str]] = {}

    def note(name: str, reason: str) -> None:
        log(f"  DDP {name}: {reason}")
        for model in MODELS:
            rows[model][name].note = rows[model][name].note or reason

    def record(reply: dict[str, Any]) -> None:
        for key, reason in reply.get("errors", {}).items():
            note(IMPL_NAMES[key], f"unavailable: {reason}")
        record_changes(changes, reply, "DDP ")

    names: list[str] = []
    for name in IMPLEMENTATIONS:
        if settings.installed(name):
            names.append(name)
        else:
            note(name, "not installed")
    blocks = blocks_for(len(names), settings.quick)
    log(f"DDP group: {', '.join(names)} in the same two processes")
    command = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        __file__,
        *(IMPL_KEYS[name] for name in names),
    ]
    group: Worker | None = None
    try:
        group = Worker(command, settings.workdir / "ddp.log")
        record(group.request({"cmd": "init"}, TIMEOUT))
        for model in MODELS:
            warm, timed = CALIBRATION_STEPS[model]
            reply = group.request({"cmd": "calibrate", "model": model, "warm": warm, "steps": timed}, TIMEOUT)
            block_steps[model] = block_steps_for(reply["seconds_per_step"])
        for round_index in range(settings.ddp_rounds):
            log(f"DDP per-step: round {round_index + 1}/{settings.ddp_rounds}")
            for model in MODELS:
                command_round = {
                    "cmd": "round",
                    "model": model,
                    "block_steps": block_steps[model],
                    "blocks": blocks,
                    "first": round_index,
                }
                reply = group.request(command_round, TIMEOUT)
                record(reply)
                add_round_times(rows[model], reply["times"])
    except Unavailable as error:
        for name in names:
            note(name, f"unavailable: {error}")
    finally:
        if group is not None:
            group.close()

    changed = changes_summary(changes)  # e.g. an environment variable a peer sets on import
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
                    f"All implementations in the same two processes (one torchrun launch; raw PyTorch's "
                    f"process group, which fabric's and Lightning's DDP strategies reuse), interleaved: each "
                    f"of {settings.ddp_rounds} rounds prepares every implementation afresh (new model, "
                    f"DDP wrapper, optimizer, DataLoader with a DistributedSampler over one shared dataset), "
                    f"warms each up for {WARM_BLOCKS} blocks, then times {blocks} blocks of "
                    f"{block_steps.get(model, 0)} steps per implementation (about {BLOCK_SECONDS * 1e3:.0f} ms "
                    f"of raw DDP each) on rank 0, taking turns, the first rotating from block to block, an "
                    f"untimed barrier before each block. Ratio of a round: summed block time over raw "
                    f"PyTorch's; the table shows the median over rounds. Batch 32 per process, 1 thread per "
                    f"process. CPU time: user + system time of both processes over the same blocks, per step "
                    f"(summed with an all_reduce). Process-wide state changed by constructing or preparing an "
                    f"implementation: {changed or 'none'}."
                ),
                extra_columns=[CPU_COLUMN],
                chart_label=f"DDP {model}",
            )
        )
    return tables


# ------------------------------------------------------------------------------------ measured program
def _main(impls: list[str]) -> None:
    """Rank 0 takes the runner's commands and broadcasts each to rank 1; both ranks run it."""
    import os

    import torch
    import torch.distributed as dist

    from cases.common import (
        SharedData,
        StateWatch,
        cycle,
        in_order,
        make_engine,
        rotated,
        time_interleaved,
        time_steps,
    )

    engines: dict[str, Any] = {}
    errors: dict[str, str] = {}
    watch = StateWatch()

    def fail(impl: str, error: Exception) -> None:
        engines.pop(impl, None)
        errors[impl] = f"{type(error).__name__}: {error}"

    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        payload.update(errors=dict(errors), changes=watch.changes)
        errors.clear()
        if "raw" not in engines:
            raise RuntimeError(f"raw PyTorch, the reference, failed: {payload['errors'].get('raw')}")
        return payload

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        if dist.is_initialized() and dist.get_rank() == 0:
            dist.broadcast_object_list([command], src=0)
        if command["cmd"] == "init":
            # raw first: it creates the default process group that the others then find
            for impl in sorted(impls, key=lambda impl: impl != "raw"):
                try:
                    engines[impl] = watch.run(impl, lambda: make_engine(impl, "32-true", distributed=True))  # noqa: B023
                except Exception as error:
                    fail(impl, error)
            return reply({})
        if command["cmd"] == "quit":
            return {}
        model = command["model"]
        if command["cmd"] == "calibrate":
            step, source = engines["raw"].prepare(model, use_loader=True, data=SharedData.make(model))
            time_steps(step, source, command["warm"])
            dist.barrier()
            return {"seconds_per_step": time_steps(step, source, command["steps"])}
        if command["cmd"] == "round":
            data = SharedData.make(model)
            block_steps = command["block_steps"]
            contenders = {}
            for impl in rotated(engines, command["first"]):  # the same order on both ranks

                def prepare(impl: str = impl) -> Any:
                    step, source = engines[impl].prepare(model, use_loader=True, data=data)
                    batches = cycle(source)
                    for _ in range(max(3, WARM_BLOCKS * block_steps)):
                        step(*next(batches))
                    return step, batches

                try:
                    contenders[impl] = watch.run(impl, prepare)
                except Exception as error:
                    fail(impl, error)
            contenders = in_order(contenders, engines)
            times = time_interleaved(
                contenders, block_steps, command["blocks"], first=command["first"], sync=dist.barrier
            )
            # the CPU time of both processes: a busy-waiting rank shows here, not in rank 0's wall time
            cpu = torch.tensor([times[impl].cpu for impl in contenders], dtype=torch.float64)
            dist.all_reduce(cpu)
            return reply(
                {
                    "times": {
                        impl: [times[impl].wall / times[impl].steps, float(total) / times[impl].steps]
                        for impl, total in zip(contenders, cpu.tolist())
                    }
                }
            )
        raise ValueError(f"unknown command {command!r}")

    # the process group exists only once raw PyTorch's engine is made: the first command ("init") is
    # handled before rank 1 can receive a broadcast, so rank 1 runs it without waiting for one
    if int(os.environ["RANK"]) == 0:
        serve(handle, on_quit=lambda: handle({"cmd": "quit"}))
    else:
        handle({"cmd": "init"})
        while True:
            received: list[Any] = [None]
            dist.broadcast_object_list(received, src=0)
            if received[0]["cmd"] == "quit":
                break
            handle(received[0])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1:])
