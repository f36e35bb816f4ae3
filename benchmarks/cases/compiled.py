"""Per-step time of a ``torch.compile``d training step: the raw compiled loop against fabric's, 1 process and DDP.

Every implementation compiles the same model with the default backend (inductor, C++ on the CPU):

* raw PyTorch: ``torch.compile(model)`` in one process; ``torch.compile(DistributedDataParallel(model))``
  in DDP (PyTorch's recipe for DDP with compile);
* fabric and lightning.fabric: ``fabric.setup(torch.compile(model), optimizer)``; ``setup`` takes the
  compiled module apart, lets the strategy wrap the user's module and compiles the wrapper again with the
  same dynamo settings (Lightning's ``_reapply_compile``), so the step runs the same compiled program as the
  raw DDP recipe, behind fabric's module wrapper.

All implementations live in the same worker (1 process), or the same two processes under ``torchrun``
(DDP: raw PyTorch creates the process group, fabric's and Lightning's DDP strategies reuse it), as in
``steps.py`` and ``ddp_steps.py``. Per model, the worker first compiles every implementation once, each
after ``torch._dynamo.reset()`` (after a throwaway compilation that pays the process's one-time costs), and
reports that time, the calls and bytecode instructions per step, the graph breaks and the compiled regions
of one step. Then each round prepares and compiles every implementation afresh (dynamo finds its cached
code for the fresh model), warms each up, checks under ``torch.profiler`` that its step runs at least one
compiled region ("Torch-Compiled Region" events; otherwise its row fails instead of timing an eager
model), and times them in short interleaved blocks (``common.time_interleaved``); frames dynamo compiles
during a block are counted against that block's implementation (recompiles while timed).

Run as a script this file is the measured program: ``compiled.py IMPL [IMPL ...]`` (under ``torchrun`` for
DDP).
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
    free_port,
    log,
    serve,
)

from cases.steps import BLOCK_SECONDS, MODEL_TITLES, WARM_BLOCKS, block_steps_for, blocks_for

IMPLEMENTATIONS = (RAW, CONTROL, FABRIC, LIGHTNING)
MODELS = ("mlp", "conv")
DDP_MODELS = ("mlp",)
TARGET = 1.02
#: compiling takes 5-20 s per model and process on a loaded 2-core machine; the first one also fills caches
PREPARE_TIMEOUT = 600.0
RUN_TIMEOUT = 300.0
CPU_COLUMN = "CPU time per step, both processes"
COUNTS_COLUMN = "calls / bytecode instructions per step"
ADDED_COLUMN = "added vs raw"
REGIONS_COLUMN = "compiled regions per step"
BREAKS_COLUMN = "graph breaks"
RECOMPILES_COLUMN = "recompiles while timed"
COMPILE_COLUMN = "compile + warm-up"
_UNIT_SCALE = {"us": 1e6, "ms": 1e3}
_UNIT_CELL = {"us": "{:.0f} µs", "ms": "{:.2f} ms"}
#: warm-up steps (the same on both ranks) after compiling in DDP: a time-based warm-up would differ
#: between the ranks, whose collectives must pair up
DDP_WARM_STEPS = 40
#: dynamo's limit of compiled versions per code object (default 8): every implementation compiles the
#: same ``nn.Sequential.forward``; a fresh model normally passes the guards of the cached code, but should
#: it not, the limit must not turn an implementation eager (the profiler check would then fail its row)
RECOMPILE_LIMIT = 64


def measure(settings: Settings) -> list[Table]:
    return _measure(settings, distributed=False) + _measure(settings, distributed=True)


def _measure(settings: Settings, distributed: bool) -> list[Table]:
    """All implementations in one worker (or one torchrun group), timed in interleaved blocks."""
    models = DDP_MODELS if distributed else MODELS
    where = "2-process DDP" if distributed else "1 process"
    rows = {model: {name: Row(name) for name in IMPLEMENTATIONS} for model in models}
    info: dict[tuple[str, str], dict[str, Any]] = {}  # (model, name) -> what its compilation reported
    recompiles: dict[tuple[str, str], int] = {}
    for model in models:
        rows[model][FABRIC].target = TARGET
        rows[model][CONTROL].short = "raw again (A/A)"
    rounds = settings.ddp_rounds if distributed else settings.step_rounds
    block_steps: dict[str, int] = {}

    def note(name: str, reason: str) -> None:
        log(f"  compiled {where}, {name}: {reason}")
        for model in models:
            rows[model][name].note = rows[model][name].note or reason

    def record_errors(reply: dict[str, Any]) -> None:
        for key, reason in reply.get("errors", {}).items():
            note(IMPL_NAMES[key], f"unavailable: {reason}")

    names: list[str] = []
    for name in IMPLEMENTATIONS:
        if settings.installed(name):
            names.append(name)
        else:
            note(name, "not installed")
    blocks = blocks_for(len(names), settings.quick)
    log(f"compiled-step worker, {where}: {', '.join(names)} together")
    command = [PYTHON, __file__, *(IMPL_KEYS[name] for name in names)]
    if distributed:
        command[1:1] = [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
        ]
    worker: Worker | None = None
    try:
        worker = Worker(command, settings.workdir / f"compiled-{'ddp' if distributed else 'single'}.log")
        record_errors(worker.request({"cmd": "init"}, PREPARE_TIMEOUT))
        for model in models:
            log(f"  compiling {model} for each implementation, {where}")
            compile_command = {"cmd": "compile", "model": model, "seconds": 2 * settings.step_seconds}
            reply = worker.request(compile_command, PREPARE_TIMEOUT)
            record_errors(reply)
            for key, prepared in reply["prepared"].items():
                info[(model, IMPL_NAMES[key])] = prepared
            block_steps[model] = block_steps_for(reply["prepared"]["raw"]["seconds_per_step"])
        for round_index in range(rounds):
            log(f"compiled step, {where}: round {round_index + 1}/{rounds}")
            for model in models:
                round_command = {
                    "cmd": "round",
                    "model": model,
                    "block_steps": block_steps[model],
                    "blocks": blocks,
                    "first": round_index,
                }
                reply = worker.request(round_command, RUN_TIMEOUT)
                record_errors(reply)
                for key, (wall, cpu, recompiled) in reply["times"].items():
                    name = IMPL_NAMES[key]
                    rows[model][name].samples.append(wall)
                    rows[model][name].cpu_samples.append(cpu)
                    recompiles[(model, name)] = recompiles.get((model, name), 0) + recompiled
    except Unavailable as error:
        for name in names:
            note(name, f"unavailable: {error}")
    finally:
        if worker is not None:
            worker.close()

    tables = []
    for model in models:
        unit = "us" if model == "mlp" else "ms"
        table_rows = list(rows[model].values())
        _fill_rows(table_rows, model, unit, info, recompiles, distributed)
        if distributed:
            title = (
                f"Compiled step, 2-process DDP (gloo, torchrun): {MODEL_TITLES[model]}, 32-true, DataLoader"
            )
            together = (
                "All implementations in the same two processes (one torchrun launch; raw PyTorch's "
                "process group, which fabric's and Lightning's DDP strategies reuse)"
            )
            feed = (
                "a DataLoader with a DistributedSampler over one shared dataset; blocks timed on rank 0, an "
                "untimed barrier before each; CPU time: user + system time of both processes over the same "
                "blocks, per step"
            )
        else:
            title = f"Compiled step, 1 process: {MODEL_TITLES[model]}, 32-true, pre-made batches"
            together = "All implementations in one process"
            feed = "the same pre-made batch tensors for all; CPU time of the process over the same blocks"
        method = (
            f"{together}, interleaved: each of {rounds} rounds prepares and compiles every implementation "
            f"afresh (new model and optimizer, a new `torch.compile`, which finds dynamo's cached code), "
            f"warms each up and checks it runs compiled, then times {blocks} blocks of "
            f"{block_steps.get(model, 0)} steps per implementation (about {BLOCK_SECONDS * 1e3:.0f} ms of raw "
            f"PyTorch each), taking turns, the first rotating from block to block; {feed}. Ratio of a round: "
            f"summed block time over raw PyTorch's; the table shows the median over rounds. "
            f"**{COMPILE_COLUMN}**: before the rounds, a throwaway compilation of the raw model pays the "
            f"process's one-time costs (loading inductor and its C++ toolchain), then each implementation "
            f"compiles once after `torch._dynamo.reset()`: none reuses the code dynamo compiled for another, "
            f"while inductor's caches (in memory and on disk) serve all alike, so this column compares "
            f"the implementations' compilations with warm caches, not a cold first compilation."
        )
        tables.append(
            _table(
                title=title,
                unit=unit,
                rows=table_rows,
                method=method,
                distributed=distributed,
                chart_label=f"compiled {'DDP ' if distributed else ''}{model}",
            )
        )
    return tables


def _fill_rows(
    table_rows: list[Row],
    model: str,
    unit: str,
    info: dict[tuple[str, str], dict[str, Any]],
    recompiles: dict[tuple[str, str], int],
    distributed: bool,
) -> None:
    """Scale the samples to ``unit`` and add the columns of the compiled tables."""
    scale = _UNIT_SCALE[unit]
    for row in table_rows:
        row.samples = [v * scale for v in row.samples if v is not None]
        row.cpu_samples = [v * scale for v in row.cpu_samples if v is not None]
        prepared = info.get((model, row.name))
        if prepared is None:
            continue
        raw = info.get((model, RAW))
        row.extra = {
            COUNTS_COLUMN: f"{prepared['calls']:.0f} / {prepared['instructions']:.0f}",
            ADDED_COLUMN: "—"
            if raw is None or row.name == RAW
            else f"{prepared['calls'] - raw['calls']:+.0f} / {prepared['instructions'] - raw['instructions']:+.0f}",
            REGIONS_COLUMN: f"{prepared['regions_per_step']:g}",
            BREAKS_COLUMN: str(prepared["graph_breaks"]),
            RECOMPILES_COLUMN: str(recompiles.get((model, row.name), "—")),
            COMPILE_COLUMN: f"{prepared['prepare_seconds']:.1f} s",
        }
        if distributed:
            cpu = row.cpu_samples
            row.extra[CPU_COLUMN] = _UNIT_CELL[unit].format(statistics.median(cpu)) if cpu else "—"


def _table(title: str, unit: str, rows: list[Row], method: str, distributed: bool, chart_label: str) -> Table:
    return Table(
        title=title,
        unit=unit,
        rows=rows,
        description=(
            f"`torch.compile` (inductor) step: raw `torch.compile(model)`"
            f"{' around DistributedDataParallel' if distributed else ''} against "
            f"`fabric.setup(torch.compile(model), optimizer)`. {method} Compilation and warm-up are not "
            f"timed (their time is in **{COMPILE_COLUMN}**). Each row is checked to run compiled: one step "
            f"under `torch.profiler` must show compiled regions (**{REGIONS_COLUMN}**), else the row fails; "
            f"**{RECOMPILES_COLUMN}** counts frames dynamo compiled during the timed steps. "
            f"**{COUNTS_COLUMN}**: counted as in the calls-per-step tables (`sys.setprofile`, "
            f"`sys.settrace` opcode events; one pass after the warm-up; C code not counted): "
            f"deterministic, so **{ADDED_COLUMN}** shows what a tool adds around the compiled "
            f"program when the wall-clock ratio is lost in the noise of a shared machine."
        ),
        extra_columns=[
            *([CPU_COLUMN] if distributed else []),
            COUNTS_COLUMN,
            ADDED_COLUMN,
            REGIONS_COLUMN,
            BREAKS_COLUMN,
            RECOMPILES_COLUMN,
            COMPILE_COLUMN,
        ],
        chart_label=chart_label,
    )


# ------------------------------------------------------------------------------------ measured program
def compiled_regions_per_step(step: Any, x: Any, y: Any) -> int:
    """How many compiled regions one step runs, counted from ``torch.profiler`` events (0: it ran eager)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(x, y)
    return sum(1 for event in profiler.events() if event.name.startswith("Torch-Compiled Region"))


def _count_per_step(step: Any, source: Any) -> tuple[float, float]:
    """Calls (Python + C) and Python bytecode instructions per step over one pass of ``source``.

    The deterministic side of the figure (see ``calls.py``): what a tool adds around the compiled
    program, without the noise of a shared machine.
    """
    from cases.calls import CallCounter, InstructionCounter, one_pass

    counter = CallCounter()
    with counter:
        steps = one_pass(step, source)
    instructions = InstructionCounter()
    with instructions:
        one_pass(step, source)
    return (counter.py_calls + counter.c_calls) / steps, instructions.instructions / steps


def _dynamo_frames() -> int:
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def _worker(impls: list[str]) -> None:
    """Host every implementation (under torchrun: on both ranks), compile each, then time them in blocks.

    Under torchrun rank 0 takes the runner's commands and broadcasts each to rank 1; both run it, with
    the same numbers of steps, so that their collectives pair up.
    """
    import os
    import time

    import torch
    import torch._dynamo
    import torch.distributed as dist

    from cases.common import (
        SharedData,
        cycle,
        in_order,
        make_engine,
        rotated,
        time_interleaved,
        time_steps,
        warm_up,
    )

    distributed = "WORLD_SIZE" in os.environ
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    engines: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def fail(impl: str, error: Exception) -> None:
        engines.pop(impl, None)
        errors[impl] = f"{type(error).__name__}: {error}"

    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        payload["errors"] = dict(errors)
        errors.clear()
        if "raw" not in engines:
            raise RuntimeError(f"raw PyTorch, the reference, failed: {payload['errors'].get('raw')}")
        return payload

    def check_compiled(impl: str, step: Any, batch: tuple[Any, Any]) -> int:
        regions = compiled_regions_per_step(step, *batch)
        if regions == 0:
            raise RuntimeError(
                f"{impl}: the step ran no compiled region (torch.profiler shows no 'Torch-Compiled "
                f"Region'): the model runs eager"
            )
        return regions

    def prepare(impl: str, model: str, data: SharedData) -> tuple[Any, Any]:
        return engines[impl].prepare(model, use_loader=distributed, compiled=True, data=data)

    def compile_each(model: str, seconds: float) -> dict[str, Any]:
        prepared = {}
        data = SharedData.make(model)
        # The process's one-time costs (loading inductor, its C++ toolchain) fall on this throwaway
        # compilation, not on whichever implementation compiles first; then each implementation compiles
        # after a reset of dynamo, inductor's caches serving all of them alike.
        torch._dynamo.reset()
        time_steps(*prepare("raw", model, data), 3)
        for impl in list(engines):
            try:
                torch._dynamo.reset()  # none reuses the code dynamo compiled for another
                started = time.perf_counter()
                breaks = _graph_breaks()
                step, source = prepare(impl, model, data)
                if distributed:  # the same number of steps on both ranks
                    time_steps(step, source, 3)
                    per_step = time_steps(step, source, DDP_WARM_STEPS)
                else:
                    per_step = warm_up(step, source, seconds)
                prepare_seconds = time.perf_counter() - started
                calls, instructions = _count_per_step(step, source)
                prepared[impl] = {
                    "seconds_per_step": per_step,
                    "prepare_seconds": prepare_seconds,
                    "regions_per_step": check_compiled(impl, step, next(iter(source))),
                    "graph_breaks": _graph_breaks() - breaks,
                    "calls": calls,
                    "instructions": instructions,
                }
            except Exception as error:
                fail(impl, error)
        return reply({"prepared": prepared})

    def one_round(model: str, block_steps: int, blocks: int, first: int) -> dict[str, Any]:
        data = SharedData.make(model)
        contenders = {}
        for impl in rotated(engines, first):  # under torchrun: the same order on both ranks
            try:
                step, source = prepare(impl, model, data)
                batches = cycle(source)
                for _ in range(max(3, WARM_BLOCKS * block_steps)):
                    step(*next(batches))
                check_compiled(impl, step, next(iter(source)))
                contenders[impl] = (step, batches)
            except Exception as error:
                fail(impl, error)
        if "raw" not in contenders:
            return reply({})
        contenders = in_order(contenders, engines)
        sync = dist.barrier if distributed else None
        times = time_interleaved(
            contenders, block_steps, blocks, first=first, probe=_dynamo_frames, sync=sync
        )
        cpu = [times[impl].cpu for impl in contenders]
        if distributed:
            # the CPU time of both processes: a busy-waiting rank shows here, not in rank 0's wall time
            total = torch.tensor(cpu, dtype=torch.float64)
            dist.all_reduce(total)
            cpu = total.tolist()
        return reply(
            {
                "times": {
                    impl: [times[impl].wall / times[impl].steps, used / times[impl].steps, times[impl].probed]
                    for impl, used in zip(contenders, cpu)
                }
            }
        )

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        if distributed and dist.is_initialized() and dist.get_rank() == 0:
            dist.broadcast_object_list([command], src=0)
        if command["cmd"] == "init":
            # raw first: under torchrun it creates the default process group that the others then find
            for impl in sorted(impls, key=lambda impl: impl != "raw"):
                try:
                    engines[impl] = make_engine(impl, "32-true", distributed=distributed)
                except Exception as error:
                    fail(impl, error)
            return reply({})
        if command["cmd"] == "compile":
            return compile_each(command["model"], command["seconds"])
        if command["cmd"] == "round":
            return one_round(command["model"], command["block_steps"], command["blocks"], command["first"])
        if command["cmd"] == "quit":
            return {}
        raise ValueError(f"unknown command {command!r}")

    if not distributed:
        serve(handle)
        return
    # the process group exists only once raw PyTorch's engine is made: rank 1 runs "init" (the runner's
    # first command) without waiting for a broadcast that rank 0 cannot send yet
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
    _worker(sys.argv[1:])
