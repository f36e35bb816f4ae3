"""The same script under `lightning.fabric` and under `fabric` gives bit-identical numbers.

The script (tests/scripts/lightning_parity.py) trains with a shuffled DataLoader, dropout and
`Fabric.seed_everything`; only its import differs. Both run here, on the same machine, so the float
results must agree to the last bit: losses of every step and the final weights of every process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.torch_exit_abort import aborted_at_exit_by_torch

pytest.importorskip("lightning.fabric")

SCRIPT = Path(__file__).parent / "scripts" / "lightning_parity.py"
RUNS = {
    "single": ["32-true", "64-true", "bf16-true", "16-true", "bf16-mixed"],
    "spawn": ["32-true"],
    "script": ["bf16-mixed"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lightning_parity")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "FABRIC_GLOBAL_SEED", "FABRIC_SEED_WORKERS"):
        env.pop(name, None)
    # two at a time: a process waiting on its import overlaps with one computing
    for mode in RUNS:
        procs = [
            subprocess.Popen(
                [sys.executable, str(SCRIPT), impl, str(out), mode],
                env=env,
                cwd=out,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for impl in ("lightning", "fabric")
        ]
        for impl, proc in zip(("lightning", "fabric"), procs):
            output, _ = proc.communicate(timeout=240)
            if impl == "lightning" and aborted_at_exit_by_torch(proc.returncode, output):
                # Lightning's run, not ours, hit torch's exit abort: repeat it once (tests/torch_exit_abort.py)
                again = subprocess.run(
                    [sys.executable, str(SCRIPT), impl, str(out), mode],
                    env=env,
                    cwd=out,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=240,
                )
                proc, output = again, again.stdout  # type: ignore[assignment]
            assert proc.returncode == 0, output[-3000:]
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("mode", "precision", "ranks"),
    [("single", p, 1) for p in RUNS["single"]] + [("spawn", "32-true", 2), ("script", "bf16-mixed", 2)],
)
def test_same_losses_and_weights_as_lightning(results: Path, mode: str, precision: str, ranks: int) -> None:
    for rank in range(ranks):
        theirs = json.loads((results / f"lightning_{mode}_{precision}_{rank}.json").read_text())
        ours = json.loads((results / f"fabric_{mode}_{precision}_{rank}.json").read_text())
        assert ours["world_size"] == theirs["world_size"] == ranks
        assert len(ours["losses"]) == len(theirs["losses"]) > 0
        assert ours["losses"] == theirs["losses"], f"rank {rank}: losses differ"
        assert ours["weights"] == theirs["weights"], f"rank {rank}: final weights differ"
    if ranks == 2:
        # the processes trained on different batches (a sharded, shuffled loader)
        first = json.loads((results / f"fabric_{mode}_{precision}_0.json").read_text())["losses"]
        second = json.loads((results / f"fabric_{mode}_{precision}_1.json").read_text())["losses"]
        assert first != second
