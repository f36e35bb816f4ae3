"""DeepSpeed checkpoints: a save killed halfway leaves the previous one; exact mid-epoch resume under ZeRO-2.

Skipped when DeepSpeed is not installed (run them with ``nox -s deepspeed``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric.strategies.deepspeed import deepspeed_available
from tests.checkpoint.killing import KillDuringWrite
from tests.strategies.multiprocess import launch_env, run_python

pytestmark = [
    pytest.mark.deepspeed,
    pytest.mark.skipif(not deepspeed_available(), reason="DeepSpeed is not installed (nox -s deepspeed)"),
]

SCRIPTS = Path(__file__).resolve().parent / "scripts"
RESUME_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "resume_run.py"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_save_killed_halfway_leaves_the_previous_checkpoint(tmp_path: Path, mode: str) -> None:
    """With ``async``, B is written by the background thread while training goes on."""
    from fabric.strategies.deepspeed import consolidate_deepspeed
    from tests.strategies.deepspeed.scripts.killed_save import LAYERS, WIDTH, big_model

    # rank 1's optimizer partition of checkpoint B has bytes on disk
    killer = KillDuringWrite(tmp_path, ".checkpoint.tmp-*/checkpoint/zero_pp_rank_1_*optim_states.pt")
    killer.start()
    try:
        run = run_python(
            [str(SCRIPTS / "killed_save.py"), str(tmp_path), mode],
            timeout=270,
            env=launch_env(DS_ACCELERATOR="cpu"),
        )
    finally:
        killer.stop.set()
        killer.join()
    partition_bytes = LAYERS * WIDTH * WIDTH * 4 // 2
    assert killer.killed_at_bytes is not None, run.output
    assert 0 < killer.killed_at_bytes < partition_bytes  # killed while its partition was being written
    assert run.returncode != 0
    assert not list(tmp_path.glob("B_saved_rank*"))

    # The previous checkpoint is whole: it consolidates (every partition readable) to checkpoint A.
    consolidate_deepspeed(tmp_path / "checkpoint", tmp_path / "a.pt")
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert loaded["tag"] == "A"
    for name, value in big_model().state_dict().items():
        assert torch.equal(loaded["model"][name], value), name


def _resume_run(out: Path, stop_at: int | None) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    args = [str(RESUME_SCRIPT), str(out), "12"]
    if stop_at is not None:
        args.append(str(stop_at))
    args += ["--devices", "2", "--strategy", "deepspeed_stage_2"]
    run = run_python(args, timeout=270, cwd=out, env=launch_env(DS_ACCELERATOR="cpu"))
    assert run.returncode == 0, run.output
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.timeout(600)
def test_exact_mid_epoch_resume_under_zero2(tmp_path: Path) -> None:
    """Shuffled data in worker processes, dropout, Python's RNG in the loss: interrupted at step 7 of 12
    (mid-epoch: 5 batches per epoch per rank) and resumed, each rank ends bit-identical to the
    uninterrupted run and saw the same samples."""
    reference = _resume_run(tmp_path / "reference", stop_at=None)
    resumed = _resume_run(tmp_path / "resumed", stop_at=7)
    for rank, (a, b) in enumerate(zip(resumed, reference, strict=True)):
        assert a["step"] == b["step"] == 12
        assert a["seen"] == b["seen"], f"rank {rank} saw different samples after resuming"
        assert a["weights"] == b["weights"], f"rank {rank} ended with different weights"
