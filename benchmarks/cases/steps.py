"""Per-step time of a training loop in one process, for every implementation, precision, model and loader.

All implementations are measured in the same worker process (one per precision: accelerate fixes the
precision once per process), so that no implementation carries a per-process offset (memory layout,
allocator state, oneDNN's primitive cache) that no number of rounds would remove. A round of one
configuration:

1. makes a fresh dataset and its pre-made batches, shared by every implementation (the same tensors);
2. prepares every implementation afresh (new model, optimizer, wrapped loader: new allocations, so that
   no allocation-layout luck sticks to one implementation) and warms each up;
3. times them in short interleaved blocks of the same number of steps (``BLOCK_SECONDS`` of raw
   PyTorch), taking turns, the one that goes first rotating from block to block (see
   ``common.time_interleaved``), so that a slow stretch of the shared machine falls on all of them.

The ratio of a round is an implementation's summed block time over raw PyTorch's; a table shows the median
over rounds. The worker also snapshots process-wide state (threads, autocast, default dtype, patched
``torch.compile``/``DataLoader``, environment, ...) around each implementation's construction and
preparation and reports every change, since one could alter the steps of the others.

Run as a script, this file is that worker: ``python cases/steps.py PRECISION IMPL [IMPL ...]``.
"""

from __future__ import annotations

import sys
from typing import Any

from harness import (
    ACCELERATE,
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
    log,
    record_changes,
    serve,
)

IMPLEMENTATIONS = (RAW, CONTROL, FABRIC, LIGHTNING, ACCELERATE)
PRECISIONS = ("32-true", "bf16-mixed")
CONFIGS = [(model, loader) for model in ("mlp", "conv") for loader in (False, True)]
TARGET = 1.03
MODEL_TITLES = {"mlp": "tiny MLP 32-64-10", "conv": "small conv net on 3x32x32"}
#: the length of one block of steps, in raw PyTorch's time (at least one step)
BLOCK_SECONDS = 0.015
#: about this many blocks per implementation and round (see ``blocks_for``)
BLOCKS, QUICK_BLOCKS = 12, 4
#: the block steps each implementation runs after its fresh preparation, before the timed blocks
WARM_BLOCKS = 2
INIT_TIMEOUT = 300.0
ROUND_TIMEOUT = 300.0


def config_key(model: str, loader: bool) -> str:
    return f"{model}/{'loader' if loader else 'batches'}"


def block_steps_for(seconds_per_step: float) -> int:
    """Steps per block: ``BLOCK_SECONDS`` of raw PyTorch, at least one step."""
    return max(1, round(BLOCK_SECONDS / seconds_per_step))


def blocks_for(implementations: int, quick: bool) -> int:
    """Blocks per implementation and round: near ``BLOCKS``, a multiple of the number of implementations,
    so that each goes first equally often."""
    wanted = QUICK_BLOCKS if quick else BLOCKS
    return implementations * max(1, round(wanted / implementations))


def measure(settings: Settings) -> list[Table]:
    tables = []
    for precision in PRECISIONS:
        tables.extend(_measure_precision(settings, precision))
    return tables


def _measure_precision(settings: Settings, precision: str) -> list[Table]:
    rows = {config: {name: Row(name) for name in IMPLEMENTATIONS} for config in CONFIGS}
    for config in CONFIGS:
        rows[config][FABRIC].target = TARGET
        rows[config][CONTROL].short = "raw again (A/A)"
    block_steps: dict[tuple[str, bool], int] = {}
    changes: dict[str, set[str]] = {}

    def note(name: str, reason: str) -> None:
        log(f"  {name} ({precision}): {reason}")
        for by_name in rows.values():
            by_name[name].note = by_name[name].note or reason

    def record_errors(reply: dict[str, Any]) -> None:
        for key, reason in reply.get("errors", {}).items():
            note(IMPL_NAMES[key], f"unavailable: {reason}")
        record_changes(changes, reply, f"({precision}) ")

    names = []
    for name in IMPLEMENTATIONS:
        if settings.installed(name):
            names.append(name)
        else:
            note(name, "not installed")
    blocks = blocks_for(len(names), settings.quick)
    log(f"step worker ({precision}): {', '.join(names)} in one process")
    worker: Worker | None = None
    try:
        worker = Worker(
            [PYTHON, __file__, precision, *(IMPL_KEYS[name] for name in names)],
            settings.workdir / f"steps-{precision}.log",
        )
        record_errors(worker.request({"cmd": "init"}, INIT_TIMEOUT))
        for config in CONFIGS:
            command = {"cmd": "calibrate", "model": config[0], "loader": config[1]}
            reply = worker.request({**command, "seconds": settings.step_seconds}, ROUND_TIMEOUT)
            block_steps[config] = block_steps_for(reply["seconds_per_step"])
        for round_index in range(settings.step_rounds):
            log(f"per-step, {precision}: round {round_index + 1}/{settings.step_rounds}")
            for config in CONFIGS:
                command = {
                    "cmd": "round",
                    "model": config[0],
                    "loader": config[1],
                    "block_steps": block_steps[config],
                    "blocks": blocks,
                    "first": round_index,
                }
                reply = worker.request(command, ROUND_TIMEOUT)
                record_errors(reply)
                add_round_times(rows[config], reply["times"])
    except Unavailable as error:
        for name in names:
            note(name, f"unavailable: {error}")
    finally:
        if worker is not None:
            worker.close()

    changed = changes_summary(changes)  # e.g. an environment variable a peer sets on import
    tables = []
    for config in CONFIGS:
        model, loader = config
        unit = "us" if model == "mlp" else "ms"
        table_rows = list(rows[config].values())
        for row in table_rows:
            row.samples = [v * (1e6 if unit == "us" else 1e3) for v in row.samples]
            row.cpu_samples = [v * (1e6 if unit == "us" else 1e3) for v in row.cpu_samples]
        feed = "wrapped DataLoader" if loader else "pre-made batches"
        steps = block_steps.get(config, 0)
        tables.append(
            Table(
                title=f"Per-step time, 1 process: {MODEL_TITLES[model]}, {precision}, {feed}",
                unit=unit,
                rows=table_rows,
                description=(
                    f"All implementations in one process, interleaved: each of {settings.step_rounds} rounds "
                    f"prepares every implementation afresh (new model, optimizer and loader; one shared "
                    f"dataset and the same pre-made batch tensors for all), warms each up for "
                    f"{WARM_BLOCKS} blocks, then times {blocks} blocks of {steps} steps per implementation "
                    f"(about {BLOCK_SECONDS * 1e3:.0f} ms of raw PyTorch each), taking turns, the first "
                    f"rotating from block to block. Ratio of a round: summed block time over raw PyTorch's; "
                    f"the table shows the median over rounds. Step: forward, loss, backward, optimizer step, "
                    f"zero_grad; SGD with momentum; batch 32; 1 thread. With a DataLoader each "
                    f"implementation iterates its own wrapped loader over the shared, shuffled "
                    f"TensorDataset, epoch after epoch. Process-wide state (threads, autocast, default dtype, "
                    f"patched torch/DataLoader functions, gc, environment) changed by constructing or "
                    f"preparing an implementation: {changed or 'none'}."
                ),
                chart_label=f"{model} {precision.split('-')[0]} {'loader' if loader else 'batches'}",
            )
        )
    return tables


# --------------------------------------------------------------------------------------------- worker
def _worker(precision: str, impls: list[str]) -> None:
    from cases.common import (
        SharedData,
        StateWatch,
        cycle,
        in_order,
        make_engine,
        rotated,
        time_interleaved,
        warm_up,
    )

    engines: dict[str, Any] = {}
    errors: dict[str, str] = {}
    watch = StateWatch()
    watched = watch.run

    def fail(impl: str, error: Exception) -> None:
        engines.pop(impl, None)
        errors[impl] = f"{type(error).__name__}: {error}"

    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        payload.update(errors=dict(errors), changes={k: list(v) for k, v in watch.changes.items()})
        errors.clear()
        return payload

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] == "init":
            for impl in impls:
                try:
                    engines[impl] = watched(impl, lambda: make_engine(impl, precision))  # noqa: B023
                except Exception as error:
                    fail(impl, error)
            if "raw" not in engines:
                raise RuntimeError(f"raw PyTorch, the reference, failed: {errors.get('raw')}")
            return reply({})
        model, loader = command["model"], command["loader"]
        if command["cmd"] == "calibrate":
            step, source = engines["raw"].prepare(model, loader, data=SharedData.make(model))
            return {"seconds_per_step": warm_up(step, source, command["seconds"])}
        if command["cmd"] == "round":
            data = SharedData.make(model)
            block_steps = command["block_steps"]
            contenders = {}
            for impl in rotated(engines, command["first"]):

                def prepare(impl: str = impl) -> Any:
                    step, source = engines[impl].prepare(model, loader, data=data)
                    batches = cycle(source)
                    for _ in range(max(3, WARM_BLOCKS * block_steps)):
                        step(*next(batches))
                    return step, batches

                try:
                    contenders[impl] = watched(impl, prepare)
                except Exception as error:
                    fail(impl, error)
            if "raw" not in contenders:
                raise RuntimeError(f"raw PyTorch, the reference, failed: {errors.get('raw')}")
            contenders = in_order(contenders, engines)
            times = time_interleaved(contenders, block_steps, command["blocks"], first=command["first"])
            return reply({"times": {impl: [t.wall / t.steps, t.cpu / t.steps] for impl, t in times.items()}})
        raise ValueError(f"unknown command {command!r}")

    serve(handle)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
