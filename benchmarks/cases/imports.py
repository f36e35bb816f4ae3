"""Wall time of ``python -c "import X"`` in a fresh process, for torch, fabric and the peers.

Every round starts one process per import, in rotating order; the interpreter's own start-up (about
50 ms) is part of every figure, as it is for a user. One untimed process imports everything first, so
that no round pays for compiling bytecode or a cold page cache.
"""

from __future__ import annotations

from harness import (
    ACCELERATE,
    FABRIC,
    LIGHTNING,
    PYTHON,
    RAW,
    Row,
    Settings,
    Table,
    child_env,
    failure_reason,
    log,
    run,
)

IMPORTS = {
    RAW: "import torch",
    FABRIC: "from fabric import Fabric",
    LIGHTNING: "import lightning.fabric",
    ACCELERATE: "import accelerate",
}
TARGET = 1.05
TIMEOUT = 120.0


def measure(settings: Settings) -> list[Table]:
    rows = {name: Row(f"{name} (`{statement}`)", short=name) for name, statement in IMPORTS.items()}
    rows[FABRIC].target = TARGET
    active = []
    for name in IMPORTS:
        if settings.installed(name):
            active.append(name)
        else:
            rows[name].note = "not installed"
    run([PYTHON, "-c", "; ".join(IMPORTS[name] for name in active)], timeout=TIMEOUT, env=child_env(False))

    for round_index in range(settings.import_rounds):
        log(f"import: round {round_index + 1}/{settings.import_rounds}")
        for name in settings.rotation(active, round_index):
            if rows[name].note:
                continue
            done = run([PYTHON, "-c", IMPORTS[name]], timeout=TIMEOUT, env=child_env(False))
            if done.returncode != 0 or done.timed_out:
                rows[name].note = f"unavailable: {failure_reason(done)}"
                continue
            rows[name].samples.append(done.seconds)
    return [
        Table(
            title="`import` wall time, fresh process",
            unit="s",
            rows=list(rows.values()),
            description=(
                f'Median over {settings.import_rounds} rounds of `python -c "import ..."` (process start to '
                f"exit), rotating order; ratio to `import torch`."
            ),
            chart_label="import",
        )
    ]
