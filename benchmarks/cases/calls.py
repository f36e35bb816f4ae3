"""Python-level calls per training step: a noise-free overhead figure.

Wall-clock ratios on a shared 2-core machine move by ±10% between rounds, so they cannot show a 2%
regression. The number of function calls a step makes does not move at all: it is counted with
``sys.setprofile`` ('call' events: Python functions; 'c_call' events: C functions called from Python,
e.g. ``torch.autocast.__enter__`` or a tensor method), over one whole pass of the data, after a warm-up
pass. The figure is the count per step; "added" is that minus raw PyTorch's count in the same
configuration (same model, data and feed, same precision, same number of processes).

Beside the calls, a further pass counts the Python bytecode instructions a step executes (``sys.settrace``
'opcode' events): the deterministic instruction count where hardware counters cannot be read (this VM has
no perf events, and callgrind is too slow). C code is not counted (see :class:`InstructionCounter`).

Configurations: precision ``32-true`` and ``bf16-mixed``; pre-made batches (the step alone) and each
tool's set-up DataLoader (its iterator counts too, averaged over one epoch including ``iter()``);
1 process, and 2-process DDP on gloo started by ``torchrun`` (counted on rank 0).

Run as a script this file is the measured program::

    PYTHONPATH=benchmarks python benchmarks/cases/calls.py IMPL[,IMPL...] PRECISION[,PRECISION...]   # JSON on stdout
    PYTHONPATH=benchmarks python benchmarks/cases/calls.py --breakdown fabric bf16-mixed             # where fabric's calls come from

Under ``torchrun`` (``WORLD_SIZE`` set) it runs the DDP loop and rank 0 writes the JSON to
``$BENCH_CALLS_FILE``. ``tests/test_overhead.py`` runs the 1-process figure for raw and fabric and holds
fabric to :data:`BUDGET`.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from harness import (
    ACCELERATE,
    FABRIC,
    IMPL_KEYS,
    LIGHTNING,
    PYTHON,
    RAW,
    Check,
    Row,
    Settings,
    Table,
    child_env,
    failure_reason,
    free_port,
    log,
    run,
)

IMPLEMENTATIONS = (RAW, FABRIC, LIGHTNING, ACCELERATE)
PRECISIONS = ("32-true", "bf16-mixed")
FEEDS = ("batches", "loader")
#: Calls per step fabric may add to the raw loop (Python + C calls), per precision and feed: the figures
#: of main on 2026-12-07, after the issue-23 reductions. With pre-made batches, 32-true: 2 for the module
#: wrapper's ``__call__`` (which skips ``Module.__call__``'s dispatch when no hook is registered) and
#: ``forward``, 2 for ``fabric.backward`` and the precision's ``backward`` (bound at set-up), 2 for
#: ``optimizer.step`` and the precision's ``optimizer_step``; ``zero_grad`` is the optimizer's own bound
#: method. bf16-mixed adds 4: the precision's ``forward_context`` and ``convert_output``, and in it
#: ``get_default_dtype`` and the cast of the output to float32. A set-up DataLoader adds per batch the
#: resume of its generator (1) and ``next``, and its ``iter()`` once per epoch (64 batches here). Lower
#: these when a reduction lands; never raise them without saying which new call per step is worth it.
BUDGET = {
    ("32-true", "batches"): 6,
    ("32-true", "loader"): 8.5,
    ("bf16-mixed", "batches"): 10,
    ("bf16-mixed", "loader"): 12.5,
}
TIMEOUT = 300.0
INSTRUCTIONS = "bytecode instructions"
ADDED_INSTRUCTIONS = "added instructions vs raw"
OUTPUT_VARIABLE = "BENCH_CALLS_FILE"
MODEL = "mlp"


# --------------------------------------------------------------------------------------------- runner
def measure(settings: Settings) -> list[Table]:
    results: dict[tuple[str, str], dict[str, Any]] = {}  # (world, impl) -> {precision: {feed: counts}}
    notes: dict[tuple[str, str], str] = {}
    for name in IMPLEMENTATIONS:
        key = IMPL_KEYS[name]
        if not settings.installed(name):
            notes[("1", name)] = notes[("2", name)] = "not installed"
            continue
        # one process per precision: Accelerate fixes the precision once per process
        for precision in PRECISIONS:
            log(f"calls per step: {name}, {precision}, 1 process")
            done = run([PYTHON, __file__, key, precision], timeout=TIMEOUT)
            if done.returncode == 0 and not done.timed_out:
                counts = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault(("1", name), {}).update(counts)
            else:
                notes[("1", name)] = f"unavailable: {failure_reason(done)}"
            log(f"calls per step: {name}, {precision}, 2-process DDP")
            output = settings.workdir / f"calls-{key}-{precision}.json"
            command = [
                PYTHON,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=2",
                "--master_addr=127.0.0.1",
                f"--master_port={free_port()}",
                __file__,
                key,
                precision,
            ]
            done = run(command, timeout=TIMEOUT, env=child_env(**{OUTPUT_VARIABLE: str(output)}))
            if done.returncode == 0 and not done.timed_out and output.exists():
                results.setdefault(("2", name), {}).update(json.loads(output.read_text()))
            else:
                notes[("2", name)] = f"unavailable: {failure_reason(done)}"

    tables = []
    for world in ("1", "2"):
        for precision in PRECISIONS:
            for feed in FEEDS:
                tables.append(_table(results, notes, world, precision, feed))
    return tables


def _table(
    results: dict[tuple[str, str], dict[str, Any]],
    notes: dict[tuple[str, str], str],
    world: str,
    precision: str,
    feed: str,
) -> Table:
    raw = results.get((world, RAW), {}).get(precision, {}).get(feed)
    rows = []
    for name in IMPLEMENTATIONS:
        counts = results.get((world, name), {}).get(precision, {}).get(feed)
        row = Row(name, note=notes.get((world, name), "" if counts else "unavailable"))
        if counts:
            row.samples = [counts["calls"]]
            added = None if raw is None else counts["calls"] - raw["calls"]
            added_instructions = None if raw is None else counts["instructions"] - raw["instructions"]
            row.extra = {
                "Python calls": f"{counts['py_calls']:.1f}",
                "C calls": f"{counts['c_calls']:.1f}",
                "added vs raw": "—" if added is None or name == RAW else f"{added:+.1f}",
                INSTRUCTIONS: f"{counts['instructions']:.0f}",
                ADDED_INSTRUCTIONS: "—"
                if added_instructions is None or name == RAW
                else f"{added_instructions:+.0f}",
            }
            if name == FABRIC and world == "1":
                row.checks.append(Check("added calls per step", added, BUDGET[(precision, feed)], unit=""))
        rows.append(row)
    where = "1 process" if world == "1" else "2-process DDP (gloo, torchrun; rank 0)"
    feed_text = "pre-made batches" if feed == "batches" else "set-up DataLoader"
    return Table(
        title=f"Calls per step, {where}: tiny MLP, {precision}, {feed_text}",
        unit="calls",
        rows=rows,
        description=(
            "Function calls per training step counted with `sys.setprofile` ('call' + 'c_call' events) "
            "over one pass of the data after a warm-up pass: deterministic, so one run suffices. "
            f"**{INSTRUCTIONS}**: Python bytecode instructions executed per step (`sys.settrace` with "
            "`frame.f_trace_opcodes`, 'opcode' events, over a further pass), the deterministic stand-in for "
            "a hardware instruction count, which this machine cannot read; it counts every instruction of "
            "every Python frame the step enters and none of the work inside C code (kernels, the "
            "dispatcher, C built-ins), so it weighs the Python overhead a tool adds, not its total cost. "
            "**added vs raw** is the overhead of the tool"
            + (
                f"; fabric's budget (the CI guard `tests/test_overhead.py`) is {BUDGET[(precision, feed)]}."
                if world == "1"
                else "."
            )
        ),
        extra_columns=["Python calls", "C calls", "added vs raw", INSTRUCTIONS, ADDED_INSTRUCTIONS],
        chart_label=f"calls {'DDP ' if world == '2' else ''}{precision.split('-')[0]} {feed}",
    )


# ------------------------------------------------------------------------------------ measured program
class CallCounter:
    """Counts 'call' and 'c_call' profile events of the current thread, optionally by function."""

    def __init__(self, by_function: bool = False) -> None:
        self.py_calls = 0
        self.c_calls = 0
        self.by_function: Counter[str] | None = Counter() if by_function else None

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.py_calls += 1
            if self.by_function is not None:
                code = frame.f_code
                self.by_function[f"{_short(code.co_filename)}:{code.co_qualname}"] += 1
        elif event == "c_call":
            self.c_calls += 1
            if self.by_function is not None:
                self.by_function[f"<C> {getattr(arg, '__qualname__', None) or repr(arg)}"] += 1

    def __enter__(self) -> CallCounter:
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


class InstructionCounter:
    """Counts the Python bytecode instructions the current thread executes ('opcode' trace events).

    The deterministic stand-in for a hardware instruction count (no perf counters on this VM): every
    instruction of every Python frame entered while counting, generator resumptions included. It does
    not see the work inside C functions (torch's kernels and dispatcher, ``isinstance``, a C iterator),
    nor frames already running when counting starts (the loop that calls the step), nor other threads.
    """

    def __init__(self) -> None:
        self.instructions = 0

    def _call(self, frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._opcode

    def _opcode(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.instructions += 1
        return self._opcode

    def __enter__(self) -> InstructionCounter:
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/fabric/", "/benchmarks/"):
        if marker in filename:
            tail = filename.rsplit(marker, 1)[1]
            return tail if marker == "site-packages/" else marker.strip("/") + "/" + tail
    return filename


def one_pass(step: Callable[[Any, Any], None], source: Iterable[Any]) -> int:
    steps = 0
    for x, y in source:
        step(x, y)
        steps += 1
    return steps


def count_per_step(
    impl: str, precision: str, feed: str, distributed: bool = False, by_function: bool = False
) -> dict[str, Any]:
    """Calls per step of ``impl``'s documented loop, over one pass of its data after a warm-up pass."""
    from cases.common import make_engine

    engine = _ENGINES.get((impl, precision, distributed))
    if engine is None:
        engine = _ENGINES[(impl, precision, distributed)] = make_engine(impl, precision, distributed)
    step, source = engine.prepare(MODEL, use_loader=feed == "loader")
    one_pass(step, source)
    one_pass(step, source)
    counter = CallCounter(by_function)
    with counter:
        steps = one_pass(step, source)
    # a pass of its own: a trace function and a profile function would see each other's work
    instructions = InstructionCounter()
    with instructions:
        one_pass(step, source)
    result: dict[str, Any] = {
        "py_calls": counter.py_calls / steps,
        "c_calls": counter.c_calls / steps,
        "calls": (counter.py_calls + counter.c_calls) / steps,
        "instructions": instructions.instructions / steps,
        "steps": steps,
    }
    if counter.by_function is not None:
        result["by_function"] = {name: count / steps for name, count in counter.by_function.items()}
    return result


_ENGINES: dict[tuple[str, str, bool], Any] = {}


def _main(impls: list[str], precisions: list[str]) -> None:
    distributed = "WORLD_SIZE" in os.environ
    results: dict[str, Any] = {}
    for impl in impls:
        for precision in precisions:
            for feed in FEEDS:
                counts = count_per_step(impl, precision, feed, distributed)
                results.setdefault(impl, {}).setdefault(precision, {})[feed] = counts
    single = results[impls[0]] if len(impls) == 1 else results  # {precision: {feed: counts}}
    if distributed:
        import torch.distributed as dist

        if dist.get_rank() == 0:
            with open(os.environ[OUTPUT_VARIABLE], "w") as file:
                json.dump(single, file)
        dist.barrier()
        dist.destroy_process_group()
    else:
        print(json.dumps(single))


def _breakdown(impl: str, precision: str, feed: str) -> None:
    """Print the functions ``impl`` calls per step more (or less) often than the raw loop."""
    raw = count_per_step("raw", precision, feed, by_function=True)
    ours = count_per_step(impl, precision, feed, by_function=True)
    print(f"{impl} {precision} {feed}: {ours['calls']:.2f} calls/step, raw {raw['calls']:.2f}")
    difference = Counter(ours["by_function"])
    difference.subtract(raw["by_function"])
    for name, count in sorted(difference.items(), key=lambda item: -abs(item[1])):
        if abs(count) > 1e-9:
            print(f"{count:+7.2f}  {name}")


if __name__ == "__main__":
    if sys.argv[1] == "--breakdown":
        _breakdown(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "batches")
    else:
        _main(sys.argv[1].split(","), sys.argv[2].split(","))
