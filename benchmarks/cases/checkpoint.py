"""Checkpoint save and load: wall time and extra peak memory, fabric against plain ``torch.save``/``torch.load``.

The state is a dict of eight float32 tensors (about 200 MB in all), once as a plain dict and once as the
buffers of a module (for ``Fabric.save``/``Fabric.load``, which take modules). Each measurement is a
fresh process, forked from a server that imported torch and fabric once: it builds what must exist
before the operation (the state to save; the module to load into), reads ``ru_maxrss`` as the
baseline, runs the operation once, and reports the wall time and the growth of ``ru_maxrss``. For a save, all growth is extra memory; for a load, the loaded state itself
(one state size) is expected and only the growth beyond it is extra. Extra memory is reported as a
percentage of the state size.

Files go to a temporary directory inside the runner's work directory, which is on the same disk as the
repository (a tmpfs would make ``fsync`` free and flatter the atomic save).

Asynchronous saves (``Fabric.save(..., async_save=True)``) are measured in a training loop: a model of
about 25 MB (75 MB with Adam's two moments) trains, and a window of steps starts with no save, a
synchronous save, or an asynchronous one, in rotating order. Reported per layout (2-process FSDP
writing a sharded directory; 1 process writing one file): the median and maximum step time over the
steps that overlap the background write (for no save and a synchronous save, over the whole window),
how long the ``save`` call blocks the loop, and the window's total time including the save.

Run as a script this file is that server: ``checkpoint.py DIRECTORY MEGABYTES``; or the training loop
of the asynchronous figure: ``checkpoint.py async-steps OUT_DIR LAYOUT ROUNDS``.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import (
    PYTHON,
    Check,
    Row,
    Settings,
    Table,
    Unavailable,
    Worker,
    child_env,
    failure_reason,
    log,
    run,
    serve,
)

TENSORS = 8
SAVE_TARGET = 1.05  # against torch.save + fsync
MEMORY_TARGET = 10.0  # percent of the state size
TIMEOUT = 180.0


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    reference: str  # the key of the raw case it is compared with
    target: float | None = None


# Fabric.save fsyncs the file and its directory (a checkpoint that a crash can truncate is worse than a
# slower one), so its like-for-like reference is torch.save followed by an fsync; plain torch.save is
# shown beside it for scale.
_NEW_SAVES = [
    Case("torch.save+fsync", "`torch.save` + flush + `os.fsync` (reference)", "torch.save+fsync"),
    Case("torch.save", "`torch.save(state, path)` (no fsync)", "torch.save+fsync"),
    Case("atomic_save", "`fabric.checkpoint.atomic_save(state, path)`", "torch.save+fsync", SAVE_TARGET),
    Case("Fabric.save", "`Fabric.save(path, {'model': module})`", "torch.save+fsync", SAVE_TARGET),
]
# The same calls when the path already holds the previous checkpoint of the same size: the steady state of
# a loop that saves `last.pt` every epoch. torch.save truncates the old file (freeing its blocks) inside
# the call; fabric renames over it and frees its blocks in a background thread (fabric.checkpoint.reclaim).
REPLACE = "/replace"
_REPLACE_SAVES = [
    Case(case.key + REPLACE, case.label, case.reference + REPLACE, case.target) for case in _NEW_SAVES
]
SAVES = _NEW_SAVES + _REPLACE_SAVES
REFERENCE_LABELS = {
    "torch.save+fsync": "`torch.save` + `os.fsync`, to a new file",
    "torch.save+fsync" + REPLACE: "`torch.save` + `os.fsync`, replacing the previous checkpoint",
}
LOAD_TARGET = 1.05  # against torch.load(weights_only=True) of the same file (issue 23, figure 5)
# The fair reference is `torch.load(weights_only=True)`: safe_load refuses arbitrary objects the same way.
# `safe_load(verify=False)` and the CRC pass alone (`verify_file`) split safe_load's time into its parts.
LOADS = [
    Case("torch.load", "`torch.load(path, weights_only=True)` (reference)", "torch.load"),
    Case("safe_load", "`fabric.checkpoint.safe_load(path)`", "torch.load", LOAD_TARGET),
    Case("safe_load/no-verify", "`safe_load(path, verify=False)`: without the CRC-32 pass", "torch.load"),
    Case("verify_file", "`fabric.checkpoint.io.verify_file(path)`: the CRC-32 pass alone", "torch.load"),
    Case(
        "load_state_dict",
        "`module.load_state_dict(torch.load(path, weights_only=True)['model'])` (reference)",
        "load_state_dict",
    ),
    Case("Fabric.load", "`Fabric.load(path, {'model': module})`", "load_state_dict", LOAD_TARGET),
]


def measure(settings: Settings) -> list[Table]:
    directory = settings.workdir / "checkpoints"
    directory.mkdir(exist_ok=True)
    cases = SAVES + LOADS
    times = {case.key: Row(case.label, target=case.target, short=case.key) for case in cases}
    memory = {case.key: Row(case.label) for case in cases}
    state_bytes = 0
    server = Worker(
        [PYTHON, __file__, str(directory), str(settings.checkpoint_mb)], settings.workdir / "checkpoint.log"
    )
    try:
        server.request({"cmd": "write-reference"}, timeout=TIMEOUT)
        for round_index in range(settings.checkpoint_rounds):
            log(f"checkpoint: round {round_index + 1}/{settings.checkpoint_rounds}")
            for group in (SAVES, LOADS):
                for case in settings.rotation(group, round_index):
                    if times[case.key].note:
                        continue
                    try:
                        result = server.request({"cmd": "measure", "case": case.key}, timeout=TIMEOUT + 30)
                    except Unavailable as error:
                        times[case.key].note = memory[case.key].note = f"unavailable: {error}"
                        log(f"  checkpoint {case.key}: {times[case.key].note}")
                        continue
                    state_bytes = result["state_bytes"]
                    times[case.key].samples.append(result["seconds"])
                    memory[case.key].samples.append(100.0 * result["extra_bytes"] / state_bytes)
    finally:
        server.close()

    size = f"{state_bytes / 2**20:.0f} MiB" if state_bytes else f"{settings.checkpoint_mb} MB"
    tables = []
    for group, verb in ((SAVES, "save"), (LOADS, "load")):
        for reference in dict.fromkeys(case.reference for case in group):
            members = [c for c in group if c.reference == reference]
            rows = [times[c.key] for c in members]
            for row, case in zip(rows, members):
                extra = memory[case.key]
                if case.key in FABRIC_CASES:
                    row.checks.append(Check("extra peak memory", extra.median, MEMORY_TARGET))
                    row.extra = {"extra peak memory": row.checks[-1].cell()}
                else:
                    cell = "n/a" if extra.median is None else f"{extra.median:.1f}%"
                    row.extra = {"extra peak memory": cell}
            tables.append(
                Table(
                    title=f"Checkpoint {verb} time, {size} state: against {REFERENCE_LABELS.get(reference, f'`{reference}`')}",
                    unit="s",
                    rows=rows,
                    description=(
                        f"Median over {settings.checkpoint_rounds} rounds, rotating order, each measurement in "
                        f"a freshly forked process{_REPLACE_NOTE if reference.endswith(REPLACE) else ''}; extra peak memory is the growth of ru_maxrss over the "
                        f"baseline{' beyond the loaded state itself' if verb == 'load' else ''}, as % of the "
                        f"state size (target for fabric: <= {MEMORY_TARGET:.0f}%). The page cache is synced "
                        f"before each measurement."
                    ),
                    extra_columns=["extra peak memory"],
                    chart_label=f"{verb} vs {reference.replace(REPLACE, ' (replace)')}",
                )
            )
    return tables + _measure_async(settings)


_REPLACE_NOTE = (
    ". Before each measurement (untimed) the target path receives a previous checkpoint of the same "
    "size, written and synced: `torch.save` truncates it, which frees its blocks inside the call; fabric "
    "drops the old file's cached pages before writing (as the truncation does), renames the new file over "
    "it and frees the old blocks in a background thread after the call returns "
    "(`fabric.checkpoint.reclaim`; on this disk, mounted with `discard`, freeing a large file also makes the "
    "next journal commit wait for the device to trim them)"
)
FABRIC_CASES = {"atomic_save", "Fabric.save", "safe_load", "safe_load/no-verify", "Fabric.load"}
FABRIC_CASES |= {case + REPLACE for case in FABRIC_CASES}


# ------------------------------------------------------------------------------------ measured program
LOAD_CASES = {"torch.load", "safe_load", "safe_load/no-verify", "load_state_dict", "Fabric.load"}


def _serve(directory: str, megabytes: int) -> None:
    """Import once, then answer each measurement from a freshly forked process.

    A forked child's ``ru_maxrss`` starts at its current resident size, not at the server's peak, so
    each measurement sees only its own memory, as in a fresh process, without paying for ``import torch``
    again. One thread: a fork is only safe without an OpenMP pool.
    """
    import os
    import resource
    import select
    import time

    import torch

    from fabric import Fabric
    from fabric.checkpoint import atomic_save, safe_load
    from fabric.checkpoint.io import verify_file

    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=1)
    numel = megabytes * 1_000_000 // 4 // TENSORS
    state_bytes = TENSORS * numel * 4
    reference = os.path.join(directory, "reference.pt")
    small_reference = os.path.join(directory, "reference-small.pt")

    def tensors(count: int = numel) -> dict[str, torch.Tensor]:
        # torch.full writes every page, so the memory is resident before the baseline is read
        return {f"layer{i}": torch.full((count,), float(i)) for i in range(TENSORS)}

    def module(count: int = numel) -> torch.nn.Module:
        holder = torch.nn.Module()
        for name, tensor in tensors(count).items():
            holder.register_buffer(name, tensor)
        return holder

    def save_and_fsync(obj: object, path: str) -> None:
        with open(path, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())

    def operation(case: str, count: int, source: str) -> Callable[[], object]:
        """The measured call, with what must exist before it already built."""
        replace = case.endswith(REPLACE)
        case = case.removesuffix(REPLACE)
        target = os.path.join(directory, f"{case}-{count}.pt")
        if replace:  # the previous checkpoint, on disk before the clock starts
            save_and_fsync({"model": tensors(count)}, target)
            os.sync()
        subject: Any = None
        if case in ("Fabric.save", "load_state_dict", "Fabric.load"):
            subject = module(count)
        elif case not in LOAD_CASES:
            subject = {"model": tensors(count)}
        return {
            "torch.save": lambda: torch.save(subject, target),
            "torch.save+fsync": lambda: save_and_fsync(subject, target),
            "atomic_save": lambda: atomic_save(subject, target),
            "Fabric.save": lambda: fabric.save(target, {"model": subject}),
            "torch.load": lambda: torch.load(source, weights_only=True),
            "safe_load": lambda: safe_load(source),
            "safe_load/no-verify": lambda: safe_load(source, verify=False),
            "verify_file": lambda: verify_file(source),
            "load_state_dict": lambda: subject.load_state_dict(
                torch.load(source, weights_only=True)["model"]
            ),
            "Fabric.load": lambda: fabric.load(source, {"model": subject}),
        }[case]

    def measure_once(case: str) -> dict[str, float]:
        # A forked process maps the libraries' code lazily: one small run first faults in the code
        # pages this case uses, so that the baseline below already counts them.
        operation(case, 1024, small_reference)()
        run_case = operation(case, numel, reference)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        run_case()
        seconds = time.perf_counter() - start
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # KiB on Linux
        # a load brings one state into memory by design; only what it needs beyond that is extra
        extra = growth - (state_bytes if case in LOAD_CASES else 0)
        return {"seconds": seconds, "extra_bytes": max(0, extra), "state_bytes": state_bytes}

    def handle(command: dict) -> dict:
        if command["cmd"] == "write-reference":
            torch.save({"model": tensors()}, reference)
            torch.save({"model": tensors(1024)}, small_reference)
            return {"ok": True}
        os.sync()  # no write-back of an earlier case may run into this one's timing
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                reply = measure_once(command["case"])
            except BaseException as error:
                reply = {"error": f"{type(error).__name__}: {error}"}
            os.write(write_end, json.dumps(reply).encode())
            os._exit(0)
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], TIMEOUT)
        data = b""
        if ready:
            while chunk := os.read(read_end, 65536):
                data += chunk
        else:
            os.kill(pid, 9)
        os.close(read_end)
        os.waitpid(pid, 0)
        for leftover in os.listdir(directory):
            if not leftover.startswith("reference"):
                os.unlink(os.path.join(directory, leftover))
        if not data:
            raise RuntimeError(f"the measurement of {command['case']} did not finish within {TIMEOUT:.0f} s")
        reply = json.loads(data)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    serve(handle)


# --------------------------------------------------------------------------------- asynchronous saves
ASYNC_MODES = ("no save", "sync save", "async save")
ASYNC_LAYOUTS = {"sharded": "2-process FSDP, sharded directory", "file": "1 process, one file"}
ASYNC_WIDTH, ASYNC_LAYERS, ASYNC_BATCH, ASYNC_WINDOW = 1024, 6, 16, 10


def _measure_async(settings: Settings) -> list[Table]:
    rounds = 2 if settings.quick else 3
    tables = []
    for layout, title in ASYNC_LAYOUTS.items():
        out_dir = settings.workdir / f"async-{layout}"
        out_dir.mkdir(exist_ok=True)
        log(f"checkpoint: async saves, {title}")
        done = run(
            [PYTHON, __file__, "async-steps", str(out_dir), layout, str(rounds)],
            timeout=TIMEOUT * 2,
            env=child_env(),
        )
        result_file = out_dir / "result.json"
        rows = {mode: Row(mode, short=f"{layout}: {mode}") for mode in ASYNC_MODES}
        if done.returncode != 0 or done.timed_out or not result_file.exists():
            for row in rows.values():
                row.note = f"unavailable: {failure_reason(done)}"
        else:
            result = json.loads(result_file.read_text())
            for mode, row in rows.items():
                rounds_of_mode = result[mode]
                row.samples = [1000 * r["median_step"] for r in rounds_of_mode]
                row.extra = {
                    "max step": f"{1000 * max(r['max_step'] for r in rounds_of_mode):.0f} ms",
                    "save call blocks": f"{1000 * _median_of(rounds_of_mode, 'block'):.0f} ms",
                    "steps overlapping": f"{_median_of(rounds_of_mode, 'overlapping'):.0f}",
                    "window total": f"{_median_of(rounds_of_mode, 'window'):.2f} s",
                }
        tables.append(
            Table(
                title=f"Training step time around a checkpoint save, {title}",
                unit="ms",
                rows=list(rows.values()),
                description=(
                    f"A {ASYNC_LAYERS}x{ASYNC_WIDTH}x{ASYNC_WIDTH} MLP with Adam (about "
                    f"{3 * ASYNC_LAYERS * ASYNC_WIDTH * ASYNC_WIDTH * 4 / 1e6:.0f} MB of state), batch {ASYNC_BATCH}; "
                    f"each window is {ASYNC_WINDOW} steps, started with no save, a synchronous save or an "
                    f"asynchronous one, in rotating order, {rounds} rounds. Step time: median over the steps "
                    f"that overlap the background write (async), over the window otherwise; 'max step' the "
                    f"largest; 'save call blocks' how long `fabric.save` held the loop; 'window total' the "
                    f"window's time including the save and the wait for it at the end."
                ),
                extra_columns=["max step", "save call blocks", "steps overlapping", "window total"],
            )
        )
    return tables


def _median_of(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def save_windows(
    fabric: Any, step: Callable[[], None], path: str, state: dict[str, Any], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Per mode (no save, sync save, async save), per round: the figures of one window of steps.

    Shared by this figure and ``benchmarks/deepspeed_async_save.py``. Each window starts with the save
    of its mode (rotating order), then runs ``ASYNC_WINDOW`` steps and waits for a pending write.
    """
    import time

    fabric.save(path, state)  # the first save of a path pays for creating it; not measured
    fabric.save(path, state, async_save=True)  # nor the first asynchronous one (its process group)
    fabric.wait_for_checkpoint()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in ASYNC_MODES}
    for round_index in range(rounds):
        shift = round_index % len(ASYNC_MODES)
        for mode in ASYNC_MODES[shift:] + ASYNC_MODES[:shift]:
            fabric.barrier()
            start = time.perf_counter()
            pending = None
            if mode == "sync save":
                fabric.save(path, state)
            elif mode == "async save":
                pending = fabric.save(path, state, async_save=True)
            block = time.perf_counter() - start
            times, overlapping = [], []
            for _ in range(ASYNC_WINDOW):
                busy = pending is not None and not pending.done()
                began = time.perf_counter()
                step()
                times.append(time.perf_counter() - began)
                if busy:
                    overlapping.append(times[-1])
            fabric.wait_for_checkpoint()
            window = time.perf_counter() - start
            measured = overlapping if mode == "async save" and overlapping else times
            results[mode].append(
                {
                    "median_step": statistics.median(measured),
                    "max_step": max(measured),
                    "block": block,
                    "overlapping": len(overlapping),
                    "window": window,
                }
            )
    return results


def _async_program(out_dir: str, layout: str, rounds: int) -> None:
    """The training loop of the asynchronous-save figure; rank 0 writes ``OUT_DIR/result.json``."""
    import os

    import torch
    from torch import nn

    from fabric import Fabric

    torch.set_num_threads(1)
    sharded = layout == "sharded"
    fabric = Fabric(accelerator="cpu", strategy="fsdp" if sharded else "auto", devices=2 if sharded else 1)
    fabric.launch()
    torch.manual_seed(0)
    module = nn.Sequential(
        *(nn.Sequential(nn.Linear(ASYNC_WIDTH, ASYNC_WIDTH), nn.ReLU()) for _ in range(ASYNC_LAYERS))
    )
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters()))
    batch = torch.randn(ASYNC_BATCH, ASYNC_WIDTH)

    def step() -> None:
        fabric.backward(model(batch).square().mean())
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    path = os.path.join(out_dir, "checkpoint" if sharded else "checkpoint.pt")
    state = {"model": model, "optimizer": optimizer, "step": 0}
    results = save_windows(fabric, step, path, state, rounds)
    if fabric.global_rank == 0:
        with open(os.path.join(out_dir, "result.json"), "w") as file:
            json.dump(results, file)


if __name__ == "__main__":
    if sys.argv[1] == "async-steps":
        _async_program(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        _serve(sys.argv[1], int(sys.argv[2]))
