"""DeepSpeed ZeRO against DDP on the same model: per-step time and per-rank peak memory, 2 CPU processes.

    python benchmarks/deepspeed.py     # needs deepspeed; appends/replaces the "DeepSpeed" section of results.md

Each strategy runs in its own pair of processes (fabric's own launcher, gloo). Every rank records its
resident memory after the process group is up and before the model exists (the baseline: Python,
torch, DeepSpeed, gloo), then trains ``STEPS`` Adam steps and records the median time of a step
(after ``WARMUP`` steps) and its peak resident memory (``ru_maxrss``). The memory figure is the peak
growth over the baseline. ZeRO-3 creates the model under ``init_module()`` (``deepspeed.zero.Init``),
so no rank ever holds it whole. Large blocks are returned to the system when freed
(``MALLOC_MMAP_THRESHOLD_=131072``), so that the peak shows what was live rather than glibc's heap
high-water mark (see fsdp_memory.md).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, and this file is named like the package:
# without this, `import deepspeed` would import this benchmark instead of DeepSpeed.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

LAYERS, WIDTH, BATCH, STEPS, WARMUP = 16, 1024, 8, 12, 2
HERE = Path(__file__).parent
STRATEGIES = (
    "ddp",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
    "deepspeed_stage_3_low_memory",
)
# DeepSpeed's ZeRO-3 defaults keep every gathered parameter alive between forward and backward when it
# will be reused (max_live_parameters and max_reuse_distance of 1e9 elements) and size buckets for 2e8
# elements: on a model this small that is the whole model on every rank. This variant frees each
# layer after use and uses small buckets: the per-rank memory ZeRO-3 is for. Since 2026-12-07 the
# "deepspeed_stage_3" row (no config) gets similar sizes from fabric on a CPU
# (fabric/strategies/deepspeed_config.py, CPU_ZERO3_SIZES); this row is the user-config variant.
LOW_MEMORY_ZERO3 = {
    "zero_optimization": {
        "stage": 3,
        "stage3_max_live_parameters": 2_000_000,
        "stage3_max_reuse_distance": 0,
        "stage3_prefetch_bucket_size": 1_100_000,
        "stage3_param_persistence_threshold": 0,
        "reduce_bucket_size": 1_100_000,
        "allgather_bucket_size": 1_100_000,
    }
}
RAW = HERE / "deepspeed_raw.json"
BEGIN, END = "<!-- deepspeed-benchmark:begin -->", "<!-- deepspeed-benchmark:end -->"


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
    chosen: Any = strategy
    if strategy == "deepspeed_stage_3_low_memory":
        from fabric.strategies import DeepSpeedStrategy

        chosen = DeepSpeedStrategy(config=LOW_MEMORY_ZERO3)
    fabric = Fabric(accelerator="cpu", devices=2, strategy=chosen)
    fabric.launch()
    if strategy != "ddp":
        import deepspeed  # noqa: F401  (its import cost belongs to the baseline, not to the model)
    baseline = _rss_mib()
    torch.manual_seed(0)
    with fabric.init_module():
        model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model, optimizer = fabric.setup(model, optimizer)
    times = []
    for _ in range(STEPS):
        fabric.barrier()
        started = time.perf_counter()
        fabric.backward(model(torch.randn(BATCH, WIDTH)).square().mean())
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "baseline_mib": baseline,
        "peak_mib": peak,
        "growth_mib": peak - baseline,
        "step_s": statistics.median(times[WARMUP:]),
    }
    with open(os.path.join(out, f"{strategy}-rank{fabric.global_rank}.json"), "w") as f:
        json.dump(report, f)


def main(only: list[str]) -> None:
    """Measure every strategy, or only those named (the others keep their last figures from RAW)."""
    results: dict[str, list[dict[str, float]]] = json.loads(RAW.read_text()) if only and RAW.exists() else {}
    with tempfile.TemporaryDirectory() as out:
        for strategy in only or STRATEGIES:
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(HERE.parent),
                "MALLOC_MMAP_THRESHOLD_": "131072",
                "DS_ACCELERATOR": "cpu",
            }
            env.pop("MASTER_PORT", None)
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--worker", strategy, out], env=env, check=True, timeout=900
            )
            print(f"{strategy}: {time.perf_counter() - started:.1f} s", flush=True)
            results[strategy] = [
                json.loads(Path(out, f"{strategy}-rank{r}.json").read_text()) for r in (0, 1)
            ]
    RAW.write_text(json.dumps(results, indent=1) + "\n")
    results = {name: results[name] for name in STRATEGIES if name in results}
    params_mib = LAYERS * (WIDTH * WIDTH + WIDTH) * 4 / 2**20
    ddp_growth = max(r["growth_mib"] for r in results["ddp"])
    ddp_step = statistics.median(r["step_s"] for r in results["ddp"])
    lines = [
        BEGIN,
        "## DeepSpeed: ZeRO stages against DDP (per-step time, per-rank peak memory)",
        "",
        f"Model: {LAYERS} x Linear({WIDTH}, {WIDTH}), {params_mib:.0f} MiB of fp32 parameters; torch Adam; batch "
        f"{BATCH} per rank; median step time over steps {WARMUP + 1}-{STEPS}; 2 processes on gloo (CPU), 32-true. "
        "`growth` is peak resident memory (ru_maxrss) minus the resident memory before the model existed, with "
        "`MALLOC_MMAP_THRESHOLD_=131072`. Measured with `python benchmarks/deepspeed.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (a shared 2-core machine: step times are noisy).",
        "",
        "| strategy | step time (median of ranks) | vs DDP | peak growth per rank, max MiB | vs DDP |",
        "| --- | --- | --- | --- | --- |",
    ]
    for strategy, ranks in results.items():
        growth = max(r["growth_mib"] for r in ranks)
        step = statistics.median(r["step_s"] for r in ranks)
        lines.append(
            f"| {strategy} | {step * 1000:.0f} ms | {step / ddp_step:.2f}x | {growth:.0f} | {growth / ddp_growth:.2f}x |"
        )
    lines += ["", END]
    section = "\n".join(lines) + "\n"
    results_md = HERE / "results.md"
    text = results_md.read_text() if results_md.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)
    print(section)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1:])
