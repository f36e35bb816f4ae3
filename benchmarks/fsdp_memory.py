"""Per-rank peak memory of FSDP against DDP for the same model, 2 processes on gloo.

    python benchmarks/fsdp_memory.py            # writes benchmarks/fsdp_memory.md

Each strategy runs in its own pair of processes (fabric's own launcher). Every rank records its
resident memory after the process group is up and before the model exists (the baseline: Python,
torch, gloo), then trains 5 Adam steps and records its peak resident memory (``ru_maxrss``) and the
bytes it holds in parameters, gradients and optimizer state. The figure is the peak growth over the
baseline. FSDP creates the model on the meta device (``init_module(empty_init=True)``), so no rank
ever holds the full model; DDP holds it whole on every rank.

Both are run twice: with glibc's default allocator settings, and with ``MALLOC_MMAP_THRESHOLD_=131072``
so that large blocks are returned to the system when freed. FSDP frees and re-allocates each block's
gathered parameters every step; with the default settings glibc keeps those blocks in its heap, and
the resident-memory peak shows the allocator's high-water mark rather than what is live.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS, WIDTH, STEPS = 16, 1024, 5
HERE = Path(__file__).parent


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker(strategy: str, out: str) -> None:
    import torch

    from fabric import Fabric

    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
    fabric.launch()
    baseline = _rss_mib()
    with fabric.init_module(empty_init=strategy == "fsdp"):
        model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model, optimizer = fabric.setup(model, optimizer)
    for _ in range(STEPS):
        fabric.backward(model(torch.randn(8, WIDTH)).square().mean())
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    def local_bytes(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    held = sum(local_bytes(p) for p in model.parameters())
    held += sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    held += sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "baseline_mib": baseline,
        "peak_mib": peak,
        "growth_mib": peak - baseline,
        "held_mib": held / 2**20,
    }
    with open(os.path.join(out, f"{strategy}-rank{fabric.global_rank}.json"), "w") as f:
        json.dump(report, f)


def main() -> None:
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    allocators = {"glibc default": {}, "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"}}
    with tempfile.TemporaryDirectory() as out:
        for allocator, extra in allocators.items():
            for strategy in ("ddp", "fsdp"):
                env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent), **extra}
                env.pop("MASTER_PORT", None)
                if not extra:
                    env.pop("MALLOC_MMAP_THRESHOLD_", None)
                started = time.perf_counter()
                command = [sys.executable, __file__, "--worker", strategy, out]
                subprocess.run(command, env=env, check=True, timeout=600)
                print(f"{strategy} ({allocator}): {time.perf_counter() - started:.1f} s", flush=True)
                results[strategy, allocator] = [
                    json.loads(Path(out, f"{strategy}-rank{r}.json").read_text()) for r in (0, 1)
                ]
    params_mib = LAYERS * (WIDTH * WIDTH + WIDTH) * 4 / 2**20
    lines = [
        "# Per-rank peak memory: FSDP against DDP",
        "",
        f"Model: {LAYERS} x Linear({WIDTH}, {WIDTH}), {params_mib:.0f} MiB of fp32 parameters; Adam; {STEPS} steps;",
        "2 processes on gloo (CPU), one process per rank. `growth` is peak resident memory (ru_maxrss) minus the",
        "resident memory before the model existed; `held` is what the rank holds in parameters, gradients and",
        "optimizer state at the end. Measured with `python benchmarks/fsdp_memory.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| allocator | strategy | rank | baseline MiB | peak MiB | growth MiB | held MiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (strategy, allocator), ranks in results.items():
        for rank, r in enumerate(ranks):
            lines.append(
                f"| {allocator} | {strategy} | {rank} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | "
                f"{r['growth_mib']:.0f} | {r['held_mib']:.0f} |"
            )
    lines.append("")
    for allocator in allocators:
        ddp = max(r["growth_mib"] for r in results["ddp", allocator])
        fsdp = max(r["growth_mib"] for r in results["fsdp", allocator])
        lines.append(
            f"- {allocator}: FSDP's per-rank peak growth is **{fsdp / ddp:.2f}x** DDP's ({fsdp:.0f} vs {ddp:.0f} MiB)."
        )
    (HERE / "fsdp_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        main()
