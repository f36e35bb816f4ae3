"""GPU check: fabric's per-step overhead against the raw PyTorch loop on CUDA, ready to run on a GPU machine.

    python benchmarks/gpu.py                 # writes its section into benchmarks/results.md
    python benchmarks/gpu.py --out /tmp/r.md # elsewhere
    python benchmarks/gpu.py --cpu-dry-run   # exercise every code path on CPU (gloo), numbers meaningless

Without a CUDA GPU it prints why and exits 0 (skipped). What it measures, each as raw vs fabric with the
same model, data and optimizer, interleaved round by round (the implementation that goes first rotates),
timing with ``torch.cuda.synchronize`` around a chunk of steps:

* 1 process, ``bf16-mixed`` and ``16-mixed`` (raw: ``torch.autocast`` and, for float16, a
  ``torch.amp.GradScaler``), eager and ``torch.compile``d (raw: ``torch.compile(model)``; fabric:
  ``fabric.setup(torch.compile(model), optimizer)``);
* on all visible GPUs (when there are 2 or more), started with ``torchrun``: DDP (raw
  ``DistributedDataParallel`` + ``DistributedSampler``-style sharding vs ``Fabric(strategy="ddp")``) and
  FSDP2 (raw ``fully_shard`` per top-level child with a bf16 ``MixedPrecisionPolicy`` vs
  ``Fabric(strategy="fsdp")``), in ``bf16-mixed``, eager;
* with 2 or more GPUs, the sharded figures of the CPU run (``cases/sharded.py``, part ``sharded``): FSDP2
  and TP + FSDP2 step time against the raw engines, FSDP2's per-GPU peak memory against DDP's (the CUDA
  caching allocator's peak), and sharded checkpoint save/load against raw DCP on as many processes as
  there are GPUs, each program run with ``BENCH_DEVICE=cuda`` (nccl, one GPU per process). DeepSpeed's
  figure stays CPU-only here (its program builds the CPU accelerator).

The model is a 4-block MLP (width 1024, batch 64): small enough that per-step overhead shows, as in
the CPU benchmarks. The table replaces the section between ``<!-- gpu:begin -->`` and ``<!-- gpu:end -->``
in the results file (appended when absent); ``benchmarks/run.py`` keeps that section when it rewrites
the file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"
WIDTH, DEPTH, BATCH = 1024, 4, 64
TARGET = 1.02  # fabric / raw, per step


# ----------------------------------------------------------------------------------------- the loops
def _model() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU()) for _ in range(DEPTH)]
    return nn.Sequential(*blocks, nn.Linear(WIDTH, 10))


def _batches(device: Any, count: int = 8) -> list[tuple[Any, Any]]:
    import torch

    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(BATCH, WIDTH, generator=generator).to(device),
            torch.randint(0, 10, (BATCH,), generator=generator).to(device),
        )
        for _ in range(count)
    ]


Step = Callable[[Any, Any], None]


def _raw_step(precision: str, compiled: bool, device: Any, wrap: str = "none") -> Step:
    import torch
    import torch.nn.functional as F

    model = _model().to(device)
    if wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif wrap == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for child in model.children():
            if any(True for _ in child.parameters()):
                fully_shard(child, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def step(x: Any, y: Any) -> None:
        with torch.autocast(device.type, dtype=dtype):
            output = forward(x)
        loss = F.cross_entropy(output.float(), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad()

    return step


def _fabric_step(
    precision: str, compiled: bool, device: Any, strategy: str = "auto", devices: int = 1
) -> Step:
    import torch
    import torch.nn.functional as F

    from fabric import Fabric

    fabric = Fabric(accelerator=device.type, devices=devices, strategy=strategy, precision=precision)
    fabric.launch()
    module = _model()
    if compiled:
        module = torch.compile(module)
    if strategy == "fsdp":
        model = fabric.setup_module(module)
        optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-4))
    else:
        model, optimizer = fabric.setup(module, torch.optim.AdamW(module.parameters(), lr=1e-4))

    def step(x: Any, y: Any) -> None:
        loss = F.cross_entropy(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()

    return step


def _time(step: Step, batches: list[tuple[Any, Any]], steps: int, device: Any) -> float:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    sync()
    return (time.perf_counter() - start) / steps


def _compare(make: dict[str, Callable[[], Step]], device: Any, steps: int, rounds: int) -> dict[str, Any]:
    """Per-step seconds of each implementation, interleaved; None and a reason where one fails."""
    batches = _batches(device)
    prepared: dict[str, Step] = {}
    reasons: dict[str, str] = {}
    for name, factory in make.items():
        try:
            prepared[name] = factory()
            _time(prepared[name], batches, max(3, steps // 4), device)  # warm-up (and compilation)
        except Exception as error:
            reasons[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            prepared.pop(name, None)
    samples: dict[str, list[float]] = {name: [] for name in prepared}
    names = list(prepared)
    for round_index in range(rounds):
        shift = round_index % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time(prepared[name], batches, steps, device))
    return {"samples": samples, "reasons": reasons}


# ------------------------------------------------------------------------------------------ one process
def _single_process(device: Any, steps: int, rounds: int, precisions: list[str]) -> list[dict[str, Any]]:
    results = []
    for precision in precisions:
        for compiled in (False, True):
            print(f"[gpu] 1 process, {precision}, {'compiled' if compiled else 'eager'}", flush=True)
            outcome = _compare(
                {
                    "raw": lambda p=precision, c=compiled: _raw_step(p, c, device),
                    "fabric": lambda p=precision, c=compiled: _fabric_step(p, c, device),
                },
                device,
                steps,
                rounds,
            )
            if outcome["reasons"]:
                print(f"[gpu]   unavailable: {outcome['reasons']}", flush=True)
            results.append(
                {"setting": f"1 process, {precision}, {'compiled' if compiled else 'eager'}", **outcome}
            )
    return results


# ----------------------------------------------------------------------------------- several processes
def _distributed_worker(strategy: str, steps: int, rounds: int, output: str) -> None:
    """Under torchrun: raw and fabric in one process group, the same chunks timed on every rank."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not cuda:
        torch.set_num_threads(1)
    # fabric initialises the process group in launch(); the raw loop shares it
    fabric_factory = lambda: _fabric_step("bf16-mixed", False, device, strategy=strategy, devices=world)  # noqa: E731
    fabric_step = fabric_factory()
    outcome = _compare(
        {"raw": lambda: _raw_step("bf16-mixed", False, device, wrap=strategy), "fabric": lambda: fabric_step},
        device,
        steps,
        rounds,
    )
    if dist.get_rank() == 0:
        Path(output).write_text(json.dumps(outcome))
    dist.barrier()
    dist.destroy_process_group()


def _distributed(strategy: str, nproc: int, steps: int, rounds: int, cpu: bool) -> dict[str, Any]:
    print(f"[gpu] {nproc} processes, {strategy}, bf16-mixed", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        output = os.path.join(directory, "result.json")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            "--master-addr=127.0.0.1",
            f"--master-port={_free_port()}",
            "--",
            __file__,
            "--worker",
            strategy,
            "--steps",
            str(steps),
            "--rounds",
            str(rounds),
            "--output",
            output,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1") if cpu else dict(os.environ)
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
        if done.returncode != 0 or not os.path.exists(output):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"samples": {}, "reasons": {"raw": f"exit {done.returncode}: {tail[0][:160]}"}}
        return json.loads(Path(output).read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------------------------- report
def _section(rows: list[dict[str, Any]], header: str) -> str:
    lines = [
        BEGIN,
        "## GPU: per-step time, fabric against raw PyTorch (`benchmarks/gpu.py`)",
        "",
        header,
        "",
        f"Median over rounds of per-step time (a {DEPTH}-block MLP of width {WIDTH}, batch {BATCH}, AdamW), "
        "raw and fabric interleaved; **ratio** is the median of fabric / raw within each round, **range** the "
        f"lowest and highest round. Target: ratio <= {TARGET}.",
        "",
        "| setting | raw | fabric | ratio | range | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        raw, ours = row["samples"].get("raw"), row["samples"].get("fabric")
        reasons = row["reasons"]
        if not raw or not ours:
            why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items()) or "no samples"
            lines.append(f"| {row['setting']} | — | — | — | — | unavailable: {why} |")
            continue
        pairs = [f / r for f, r in zip(ours, raw) if r > 0]
        ratio = statistics.median(pairs)
        verdict = "met" if ratio <= TARGET else "missed"
        lines.append(
            f"| {row['setting']} | {statistics.median(raw) * 1e3:.3f} ms | {statistics.median(ours) * 1e3:.3f} ms "
            f"| {ratio:.3f} | {min(pairs):.2f}-{max(pairs):.2f} | {verdict} |"
        )
    lines.append(END)
    return "\n".join(lines) + "\n"


def _sharded(cpu: bool, nproc: int) -> list[str]:
    """The sharded figures of ``cases/sharded.py`` on the GPUs (nccl), or on 2 CPU processes for a dry run.

    The programs are the CPU run's, switched by ``BENCH_DEVICE``; configurations with more processes than
    GPUs are left out (``BENCH_MAX_PROCS``), since nccl refuses two ranks on one GPU.
    """
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    from cases import sharded
    from harness import Settings
    from report import _tables

    os.environ["BENCH_DEVICE"] = "cpu" if cpu else "cuda"
    os.environ["BENCH_MAX_PROCS"] = str(nproc)
    settings = Settings.make(quick=cpu, peers={}, workdir=Path(tempfile.mkdtemp(prefix="fabric-gpu-bench-")))
    tables = [
        *sharded.measure_fsdp(settings),
        *sharded.measure_tensor_parallel(settings),
        *sharded.measure_checkpoints(settings),
    ]
    if importlib.util.find_spec("deepspeed") is not None:  # the DeepSpeed figure, where it is installed
        tables += sharded.measure_deepspeed(settings)
    backend = "(gloo, CPU dry run)" if cpu else "(nccl)"
    for table in tables:
        title = table.title.replace("(gloo, DS_ACCELERATOR=cpu)", backend)
        table.title = "GPU: " + title.replace("(gloo)", backend)
    lines = _tables(tables, smoke=cpu)
    note = (
        "Memory on CUDA is the growth of `torch.cuda.max_memory_allocated()` on the larger rank, not "
        "`ru_maxrss`; the allocator rows of the CPU figure do not apply there."
    )
    return ["", note, *lines]


def write_section(path: Path, section: str) -> None:
    """Replace the GPU section of ``path`` (or append it), leaving the rest of the file as it is."""
    text = path.read_text() if path.exists() else "# torch-fabric benchmarks\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def keep_section(old: str, new: str) -> str:
    """``new`` with every marked section of ``old`` appended (for the CPU runner, which rewrites the file).

    A section is what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``: this script's GPU
    table and any other figure measured elsewhere (e.g. ``benchmarks/deepspeed.py``).
    """
    import re

    sections = [
        match.group(0) for match in re.finditer(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", old, re.S)
    ]
    for section in sections:
        new = new.rstrip("\n") + "\n\n" + section + "\n"
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.md")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed chunk")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpu-dry-run", action="store_true", help="run every path on CPU, few steps")
    parser.add_argument(
        "--parts",
        default="single,ddp,fsdp,sharded",
        help="which parts to run (default all): single, ddp, fsdp, sharded",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _distributed_worker(args.worker, args.steps, args.rounds, args.output)
        return 0

    import torch

    cpu = args.cpu_dry_run
    if not cpu and not torch.cuda.is_available():
        print("benchmarks/gpu.py: skipped, no CUDA GPU on this machine (torch.cuda.is_available() is False).")
        return 0
    if cpu:
        torch.set_num_threads(1)
        args.steps, args.rounds = min(args.steps, 4), min(args.rounds, 2)
    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    precisions = ["bf16-mixed", "16-mixed"]
    parts = {part.strip() for part in args.parts.split(",")}
    rows = _single_process(device, args.steps, args.rounds, precisions) if "single" in parts else []
    nproc = 2 if cpu else torch.cuda.device_count()
    if nproc >= 2:
        for strategy in [name for name in ("ddp", "fsdp") if name in parts]:
            outcome = _distributed(strategy, nproc, args.steps, args.rounds, cpu)
            rows.append({"setting": f"{nproc} processes, {strategy}, bf16-mixed, eager", **outcome})
    else:
        rows.append({"setting": "DDP / FSDP", "samples": {}, "reasons": {"all": "only one GPU visible"}})

    name = "CPU dry run (numbers meaningless)" if cpu else torch.cuda.get_device_name(0)
    header = (
        f"- **date**: {time.strftime('%Y-%m-%d %H:%M %Z')}; **device**: {name} x {nproc if nproc >= 2 else 1}; "
        f"**torch**: {torch.__version__}; {args.rounds} rounds of {args.steps} steps"
    )
    section = _section(rows, header)
    if "sharded" in parts and nproc >= 2:
        section = section.replace(END, "\n".join(_sharded(cpu, nproc)) + "\n" + END)
    print(section)
    write_section(args.out, section)
    print(f"[gpu] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
