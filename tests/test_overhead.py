"""Per-step overhead guard: the Python calls fabric adds to a raw training step stay within a budget.

Wall-clock timings on a shared machine are too noisy to catch a small regression; the number of calls a
step makes is exact. The count comes from the benchmark's own counter (``benchmarks/cases/calls.py``,
which also reports Lightning Fabric and Accelerate), run in a fresh process so that nothing another test
left behind (a process group, a default dtype, a patched module) changes the figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
from cases.calls import BUDGET, FEEDS, PRECISIONS  # noqa: E402

sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def counts() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    # keep the caller's PYTHONPATH: it may point at the checkout under test rather than the installed copy
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=path, PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "cases" / "calls.py"), "raw,fabric", ",".join(PRECISIONS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("feed", FEEDS)
def test_calls_added_per_step_within_budget(counts: dict, precision: str, feed: str) -> None:
    raw = counts["raw"][precision][feed]
    ours = counts["fabric"][precision][feed]
    added = ours["calls"] - raw["calls"]
    budget = BUDGET[(precision, feed)]
    assert raw["calls"] > 100, f"the raw loop made only {raw['calls']} calls per step: the counter is broken"
    assert added <= budget, (
        f"fabric adds {added:.2f} calls per step to the raw loop ({precision}, {feed}), over the budget of "
        f"{budget}. Find the new calls with "
        f"`PYTHONPATH=benchmarks python benchmarks/cases/calls.py --breakdown fabric {precision} {feed}`; "
        f"move per-step work to setup."
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("feed", FEEDS)
def test_bytecode_instructions_are_counted(counts: dict, precision: str, feed: str) -> None:
    # the benchmark's instruction figure: every Python call the step makes runs at least a few instructions
    for impl in ("raw", "fabric"):
        figures = counts[impl][precision][feed]
        assert figures["instructions"] > 3 * figures["py_calls"], (
            f"{impl} ({precision}, {feed}): {figures['instructions']} bytecode instructions for "
            f"{figures['py_calls']} Python calls per step: the instruction counter is broken"
        )
