"""Benchmark torch-fabric against raw PyTorch, Lightning Fabric and Accelerate, side by side in one run.

    python benchmarks/run.py            # the full run (about 12-14 minutes on 2 cores), or `nox -s bench`
    python benchmarks/run.py --quick    # a smoke run of every case (about 4.5 minutes)

Writes ``benchmarks/results.md`` and ``benchmarks/results.png``. Each figure lives in one module of
``benchmarks/cases/``; see ``benchmarks/README.md`` for what each measures. This process only
orchestrates: it never imports torch or a peer, every measurement runs in a child process.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from cases import (
    calls,
    checkpoint,
    compiled,
    ddp_steps,
    growth,
    imports,
    launch,
    memory,
    sharded,
    steps,
    threads,
)
from gpu import keep_section
from harness import ACCELERATE, BENCH_DIR, LIGHTNING, PYTHON, Row, Settings, Table, log
from report import chart, kept_figures, markdown

FIGURES = {
    "imports": imports.measure,
    "calls": calls.measure,
    "steps": steps.measure,
    "ddp": ddp_steps.measure,
    "compiled": compiled.measure,
    "launch": launch.measure,
    "threads": threads.measure,
    "checkpoint": checkpoint.measure,
    "memory": memory.measure,
    "fsdp": sharded.measure_fsdp,
    "tp": sharded.measure_tensor_parallel,
    "sharded_checkpoint": sharded.measure_checkpoints,
    "deepspeed": sharded.measure_deepspeed,
    "growth": growth.measure,
    "launch_scaling": launch.measure_scaling,
}
PEER_DISTRIBUTIONS = {LIGHTNING: "lightning", ACCELERATE: "accelerate"}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _header(settings: Settings, seconds: float) -> dict[str, str]:
    peers = ", ".join(
        f"{name} {version}" if version else f"{name} not installed"
        for name, version in settings.peers.items()
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch") or "not installed",
        "torch-fabric": _version("torch-fabric") or "not installed",
        "peers": peers,
        "run": f"{'quick smoke run (not representative)' if settings.quick else 'full run'}, "
        f"{seconds / 60:.1f} min; 1 thread per process (OMP_NUM_THREADS=1); fabric byte-compiled first, as `pip install` does",
    }


def _byte_compile_fabric() -> None:
    """Write the package under test's ``.pyc`` files, as ``pip install`` does for a user.

    torch and the peers are installed packages with their bytecode compiled at install time; fabric is
    usually an editable install or a checkout on ``PYTHONPATH``, whose bytecode Python writes only on
    first import, and never where ``PYTHONDONTWRITEBYTECODE`` is set (as on the machines these figures
    come from). Without this, every measured process would compile fabric from source (about 70 ms of
    CPU per process) while importing everything else from bytecode.
    """
    spec = importlib.util.find_spec("fabric")
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        subprocess.run([PYTHON, "-m", "compileall", "-q", location], check=False, timeout=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few rounds and short timings: a smoke run")
    parser.add_argument(
        "--only", default="", help=f"comma-separated figures to run (default all): {', '.join(FIGURES)}"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where results.md and results.png go")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(FIGURES)
    unknown = set(selected) - set(FIGURES)
    if unknown:
        parser.error(f"--only: unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")

    peers = {name: _version(distribution) for name, distribution in PEER_DISTRIBUTIONS.items()}
    _byte_compile_fabric()
    # On the repository's disk (not a tmpfs): the checkpoint figures must pay for real writes.
    workdir = Path(tempfile.mkdtemp(prefix=".run-", dir=BENCH_DIR))
    settings = Settings.make(args.quick, peers, workdir)
    started = time.perf_counter()
    figures: dict[str, list[Table]] = {}
    try:
        for name in selected:
            figure_started = time.perf_counter()
            log(f"== {name}")
            try:
                figures[name] = FIGURES[name](settings)
            except Exception as error:  # one broken figure must not lose the others
                traceback.print_exc()
                figures[name] = [
                    Table(f"{name}: failed", "s", [Row("error", note=f"{type(error).__name__}: {error}")])
                ]
            log(f"== {name} took {time.perf_counter() - figure_started:.0f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - started

    header = _header(settings, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.md"
    previous = results.read_text() if results.exists() else ""
    tables = [table for tables in figures.values() for table in tables]
    # a run of some figures (--only) keeps the others' tables; a full run replaces them all
    full = set(selected) == set(FIGURES)
    kept = {} if full else kept_figures(previous, selected, {table.title for table in tables})
    when = f"{header['date']}, {'quick' if settings.quick else 'full'} run"
    text = markdown(figures, header, when, kept, order=list(FIGURES), smoke=settings.quick)
    # the GPU section comes from benchmarks/gpu.py on another machine: keep it
    results.write_text(keep_section(previous, text))
    log(f"wrote {results}")
    try:
        mode = "quick smoke run (not representative)" if settings.quick else "full run"
        subtitle = f"{_cpu_model()}, {os.cpu_count()} cores; {mode}, {header['date']}"
        # from the file just written: kept figures are charted too
        chart(results.read_text(), args.out / "results.png", subtitle)
        log(f"wrote {args.out / 'results.png'}")
    except ImportError:
        log("matplotlib is not installed: no chart")
    log(f"total {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
