"""Peak resident memory of a short training run: the conv net, 50 steps, through fabric and raw PyTorch.

Each run is a fresh process (imports included, since what a package imports is part of what it costs);
the figure is ``ru_maxrss`` at the end. The growth during training (peak at the end minus the peak
before the first step) is shown beside it.

Run as a script this file is one run: ``memory.py raw|fabric STEPS``.
"""

from __future__ import annotations

import json
import statistics
import sys

from harness import FABRIC, IMPL_KEYS, PYTHON, RAW, Row, Settings, Table, child_env, failure_reason, log, run

STEPS = 50
TIMEOUT = 180.0


def measure(settings: Settings) -> list[Table]:
    names = [RAW, FABRIC]
    rows = {name: Row(name) for name in names}
    growth: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(settings.memory_rounds):
        log(f"training memory: round {round_index + 1}/{settings.memory_rounds}")
        for name in settings.rotation(names, round_index):
            if rows[name].note:
                continue
            done = run([PYTHON, __file__, IMPL_KEYS[name], str(STEPS)], timeout=TIMEOUT, env=child_env())
            if done.returncode != 0 or done.timed_out:
                rows[name].note = f"unavailable: {failure_reason(done)}"
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows[name].samples.append(result["peak"] / 2**20)
            growth[name].append((result["peak"] - result["before_training"]) / 2**20)
    for name in names:
        cell = f"{statistics.median(growth[name]):.1f} MB" if growth[name] else "n/a"
        rows[name].extra = {"growth during training": cell}
    return [
        Table(
            title=f"Peak memory of a training run (conv net, {STEPS} steps, 32-true, DataLoader)",
            unit="MB",
            rows=list(rows.values()),
            description=(
                f"Median `ru_maxrss` over {settings.memory_rounds} fresh processes each (imports included)."
            ),
            extra_columns=["growth during training"],
            chart_label="train peak RSS",
        )
    ]


# ------------------------------------------------------------------------------------ measured program
def _main(impl: str, steps: int) -> None:
    import resource

    from cases.common import make_engine, time_steps

    engine = make_engine(impl, "32-true")
    step, loader = engine.prepare("conv", use_loader=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    time_steps(step, loader, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "before_training": before}))


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
