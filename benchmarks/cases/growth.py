"""How fabric's cost grows: per-step overhead against model depth, checkpoint time against state size.

Depth: an MLP of 1, 10 and 50 ``Linear(64, 64) + ReLU`` layers, in one process, raw loop and fabric
(``32-true``) prepared side by side; per depth, the calls per step each makes (``sys.setprofile``, the
noise-free figure of ``calls.py``) and the per-step time, interleaved in blocks (``time_interleaved``).
Fabric's added calls and added microseconds should not grow with depth: it wraps the model, not its
layers.

Size: ``fabric.save`` (one file: atomic write, fsync, checksums) against ``torch.save`` + fsync of
states of growing size, alternating, each save to a new file on the repository's disk after
``os.sync``. Seconds per MB should stay flat (linear growth at disk speed); the ratio to the
reference should not grow.

Run as a script this file is the measured program: ``growth.py OUT.json ROUNDS SIZES_MB DIRECTORY``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from harness import FABRIC, PYTHON, RAW, Row, Settings, Table, child_env, failure_reason, log, run

DEPTHS = (1, 10, 50)
WIDTH, BATCH = 64, 32
TIMEOUT = 1800.0


def measure(settings: Settings) -> list[Table]:
    sizes = (5, 10, 20) if settings.quick else (50, 200, 800)
    rounds = 2 if settings.quick else 7
    out = settings.workdir / "growth.json"
    directory = settings.workdir / "growth-checkpoints"
    directory.mkdir(exist_ok=True)
    log(f"growth: depths {DEPTHS}, checkpoint sizes {sizes} MB, {rounds} rounds")
    done = run(
        [PYTHON, __file__, str(out), str(rounds), ",".join(map(str, sizes)), str(directory)],
        timeout=TIMEOUT,
        env=child_env(),
    )
    depth_rows = [Row(f"{RAW}, depth {depth}", short=f"raw d{depth}") for depth in DEPTHS]
    fabric_rows = [Row(f"{FABRIC}, depth {depth}", short=f"fabric d{depth}") for depth in DEPTHS]
    save_rows = {size: Row(f"`torch.save` + fsync, {size} MB", short=f"torch {size}MB") for size in sizes}
    fabric_saves = {size: Row(f"`fabric.save`, {size} MB", short=f"fabric {size}MB") for size in sizes}
    if done.returncode != 0 or done.timed_out or not out.exists():
        reason = f"unavailable: {failure_reason(done)}"
        for row in [*depth_rows, *fabric_rows, *save_rows.values(), *fabric_saves.values()]:
            row.note = reason
        log(f"  growth: {reason}")
        return [_depth_table(depth_rows, fabric_rows, {}), _size_table(save_rows, fabric_saves, rounds)]
    result = json.loads(out.read_text())
    calls: dict[int, tuple[int, int]] = {}
    for index, depth in enumerate(DEPTHS):
        entry = result["depth"][str(depth)]
        depth_rows[index].samples = [value * 1e6 for value in entry["raw"]]
        fabric_rows[index].samples = [value * 1e6 for value in entry["fabric"]]
        calls[depth] = (entry["calls"]["raw"], entry["calls"]["fabric"])
    for size in sizes:
        save_rows[size].samples = result["size"][str(size)]["raw"]
        fabric_saves[size].samples = result["size"][str(size)]["fabric"]
    return [_depth_table(depth_rows, fabric_rows, calls), _size_table(save_rows, fabric_saves, rounds)]


def _depth_table(raw: list[Row], fabric: list[Row], calls: dict[int, tuple[int, int]]) -> Table:
    rows = []
    for depth, raw_row, fabric_row in zip(DEPTHS, raw, fabric):
        raw_calls, fabric_calls = calls.get(depth, (None, None))
        added = None if raw_calls is None or fabric_calls is None else fabric_calls - raw_calls
        raw_median, fabric_median = raw_row.median, fabric_row.median
        microseconds = (
            "n/a" if raw_median is None or fabric_median is None else f"{fabric_median - raw_median:+.1f}"
        )
        raw_row.extra = {"calls per step": "n/a" if raw_calls is None else str(raw_calls), "added": ""}
        fabric_row.extra = {
            "calls per step": "n/a" if fabric_calls is None else str(fabric_calls),
            "added": f"{'n/a' if added is None else f'{added:+d}'} calls, {microseconds} us",
        }
        rows += [raw_row, fabric_row]
    return Table(
        "How per-step overhead grows with depth: fabric against the raw loop, 1 process, 32-true",
        "us",
        rows,
        (
            f"MLPs of {', '.join(map(str, DEPTHS))} `Linear({WIDTH}, {WIDTH})` + ReLU layers, batch {BATCH}, "
            "SGD; both prepared in one process, timed in interleaved blocks; calls per step from "
            "`sys.setprofile` ('call' + 'c_call'). 'added' is fabric minus raw at the same depth: it should "
            "stay constant across depths. The ratio column compares each row with the first (raw, depth 1)."
        ),
        extra_columns=["calls per step", "added"],
    )


def _size_table(raw: dict[int, Row], fabric: dict[int, Row], rounds: int) -> Table:
    rows = []
    for size in raw:
        for row in (raw[size], fabric[size]):
            median = row.median
            row.extra = {"s per GB": "n/a" if median is None else f"{median / size * 1000:.2f}"}
        ratios = [f / r for f, r in zip(fabric[size].values, raw[size].values) if r > 0]
        fabric[size].extra["vs torch.save+fsync"] = f"{statistics.median(ratios):.2f}x" if ratios else "n/a"
        raw[size].extra["vs torch.save+fsync"] = ""
        rows += [raw[size], fabric[size]]
    return Table(
        "How checkpoint time grows with size: `fabric.save` against `torch.save` + fsync, one file",
        "s",
        rows,
        (
            f"Median over {rounds} rounds, the two alternating (first rotating), each save to a new file "
            "after `os.sync`. 's per GB' flat across sizes means linear growth; 'vs torch.save+fsync' is the "
            "median of the rounds' ratios at the same size (the ratio column compares with the first row)."
        ),
        extra_columns=["s per GB", "vs torch.save+fsync"],
    )


# ------------------------------------------------------------------------------------ measured program
def _main(out: str, rounds: int, sizes: list[int], directory: str) -> None:
    import time

    import torch
    from torch import nn

    from cases.calls import CallCounter
    from cases.common import time_interleaved
    from fabric import Fabric

    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=1)
    x, y = torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)
    result: dict[str, dict] = {"depth": {}, "size": {}}

    def mlp(depth: int) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*(layer for _ in range(depth) for layer in (nn.Linear(WIDTH, WIDTH), nn.ReLU())))

    def forever(batch: tuple[torch.Tensor, torch.Tensor]):  # type: ignore[no-untyped-def]
        while True:
            yield batch

    def measure_depth(depth: int) -> dict:
        raw_model = mlp(depth)
        raw_optimizer = torch.optim.SGD(raw_model.parameters(), lr=1e-3)
        module = mlp(depth)
        model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=1e-3))

        def raw_step(x: torch.Tensor, y: torch.Tensor) -> None:
            nn.functional.mse_loss(raw_model(x), y).backward()
            raw_optimizer.step()
            raw_optimizer.zero_grad()

        def fabric_step(x: torch.Tensor, y: torch.Tensor) -> None:
            fabric.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()

        calls = {}
        for name, step in (("raw", raw_step), ("fabric", fabric_step)):
            for _ in range(3):
                step(x, y)
            with CallCounter() as counter:
                for _ in range(10):
                    step(x, y)
            calls[name] = (counter.py_calls + counter.c_calls) // 10
        started = time.perf_counter()
        for _ in range(5):
            raw_step(x, y)
        block = max(1, round(0.05 / ((time.perf_counter() - started) / 5)))
        times: dict[str, list[float]] = {"raw": [], "fabric": []}
        for round_index in range(rounds):
            contenders = {"raw": (raw_step, forever((x, y))), "fabric": (fabric_step, forever((x, y)))}
            measured = time_interleaved(contenders, block, 10, first=round_index)
            for name, value in measured.items():
                times[name].append(value.wall / value.steps)
        return {**times, "calls": calls}

    for depth in DEPTHS:
        result["depth"][str(depth)] = measure_depth(depth)

    def save_and_fsync(state: dict, path: str) -> None:
        with open(path, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())

    for size in sizes:
        state = {"model": nn.Linear(1024, max(1, size * 2**20 // 4 // 1024), bias=False)}
        seconds: dict[str, list[float]] = {"raw": [], "fabric": []}
        for round_index in range(rounds):
            order = ["raw", "fabric"] if round_index % 2 == 0 else ["fabric", "raw"]
            for name in order:
                path = os.path.join(directory, f"{name}-{size}-{round_index}.pt")
                os.sync()
                started = time.perf_counter()
                if name == "raw":
                    save_and_fsync({"model": state["model"].state_dict()}, path)
                else:
                    fabric.save(path, state)
                seconds[name].append(time.perf_counter() - started)
                os.unlink(path)
        result["size"][str(size)] = seconds
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")], sys.argv[4])
