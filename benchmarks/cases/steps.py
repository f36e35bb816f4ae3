"""Per-step time of a training loop in one process, for every implementation, precision, model and loader.

The runner keeps one worker process per implementation (and precision: accelerate fixes the precision
once per process) and alternates between them: in round r each configuration runs on every
implementation, the implementation that goes first rotating with r. A worker prepares each
configuration once (fresh model, optimizer and data, then a warm-up) and afterwards only times steps.

Run as a script, this file is that worker: ``python cases/steps.py IMPL PRECISION``.
"""

from __future__ import annotations

import sys
from typing import Any

from harness import (
    ACCELERATE,
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
    log,
    serve,
)

IMPLEMENTATIONS = (RAW, FABRIC, LIGHTNING, ACCELERATE)
PRECISIONS = ("32-true", "bf16-mixed")
CONFIGS = [(model, loader) for model in ("mlp", "conv") for loader in (False, True)]
TARGET = 1.03
MIN_STEPS, MAX_STEPS = 5, 5000
MODEL_TITLES = {"mlp": "tiny MLP 32-64-10", "conv": "small conv net on 3x32x32"}


def config_key(model: str, loader: bool) -> str:
    return f"{model}/{'loader' if loader else 'batches'}"


def measure(settings: Settings) -> list[Table]:
    tables = []
    for precision in PRECISIONS:
        tables.extend(_measure_precision(settings, precision))
    return tables


def _measure_precision(settings: Settings, precision: str) -> list[Table]:
    rows = {config: {name: Row(name) for name in IMPLEMENTATIONS} for config in CONFIGS}
    for config in CONFIGS:
        rows[config][FABRIC].target = TARGET
    workers: dict[str, Worker] = {}

    def drop(name: str, reason: str) -> None:
        log(f"  {name} ({precision}): {reason}")
        for by_name in rows.values():
            by_name[name].note = by_name[name].note or reason
        worker = workers.pop(name, None)
        if worker is not None:
            worker.close()

    for name in IMPLEMENTATIONS:
        if not settings.installed(name):
            drop(name, "not installed")
            continue
        log(f"step worker: {name}, {precision}")
        key = IMPL_KEYS[name]
        try:
            workers[name] = Worker(
                [PYTHON, __file__, key, precision], settings.workdir / f"steps-{key}-{precision}.log"
            )
        except Unavailable as error:
            drop(name, f"unavailable: {error}")

    steps: dict[tuple[str, bool], int] = {}
    for config in CONFIGS:
        warm: dict[str, float] = {}
        for name in list(workers):
            try:
                command = {"cmd": "prepare", "model": config[0], "loader": config[1]}
                command["seconds"] = settings.step_seconds
                warm[name] = workers[name].request(command)["seconds_per_step"]
            except Unavailable as error:
                drop(name, f"unavailable: {error}")
        # The same number of steps for every implementation: enough for `step_seconds` of raw PyTorch.
        per_step = warm.get(RAW) or min(warm.values(), default=1.0)
        steps[config] = max(MIN_STEPS, min(MAX_STEPS, round(settings.step_seconds / per_step)))

    for round_index in range(settings.step_rounds):
        log(f"per-step, {precision}: round {round_index + 1}/{settings.step_rounds}")
        for config in CONFIGS:
            for name in settings.rotation(IMPLEMENTATIONS, round_index):
                worker = workers.get(name)
                if worker is None:
                    continue
                command = {"cmd": "run", "key": config_key(*config), "steps": steps[config]}
                try:
                    reply = worker.request(command)
                except Unavailable as error:
                    drop(name, f"unavailable: {error}")
                    continue
                rows[config][name].samples.append(reply["seconds_per_step"])
                rows[config][name].cpu_samples.append(reply["cpu_seconds_per_step"])
    for name in list(workers):
        workers.pop(name).close()

    tables = []
    for config in CONFIGS:
        model, loader = config
        unit = "us" if model == "mlp" else "ms"
        table_rows = list(rows[config].values())
        for row in table_rows:
            row.samples = [v * (1e6 if unit == "us" else 1e3) for v in row.samples]
            row.cpu_samples = [v * (1e6 if unit == "us" else 1e3) for v in row.cpu_samples]
        feed = "wrapped DataLoader" if loader else "pre-made batches"
        tables.append(
            Table(
                title=f"Per-step time, 1 process: {MODEL_TITLES[model]}, {precision}, {feed}",
                unit=unit,
                rows=table_rows,
                description=(
                    f"Median over {settings.step_rounds} rounds of {steps[config]} steps each "
                    f"(forward, loss, backward, optimizer step, zero_grad; SGD with momentum; batch 32; "
                    f"1 thread). With a DataLoader each implementation iterates its own wrapped loader "
                    f"over a shuffled TensorDataset."
                ),
                chart_label=f"{model} {precision.split('-')[0]} {'loader' if loader else 'batches'}",
            )
        )
    return tables


# --------------------------------------------------------------------------------------------- worker
def _worker(impl: str, precision: str) -> None:
    from cases.common import make_engine, time_steps_with_cpu, warm_up

    engine = make_engine(impl, precision)
    prepared: dict[str, Any] = {}

    def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] == "prepare":
            step, source = engine.prepare(command["model"], command["loader"])
            key = config_key(command["model"], command["loader"])
            prepared[key] = (step, source)
            return {"seconds_per_step": warm_up(step, source, command["seconds"])}
        if command["cmd"] == "run":
            step, source = prepared[command["key"]]
            wall, cpu = time_steps_with_cpu(step, source, command["steps"])
            return {"seconds_per_step": wall, "cpu_seconds_per_step": cpu}
        raise ValueError(f"unknown command {command!r}")

    serve(handle)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
