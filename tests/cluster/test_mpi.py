"""Fabric under OpenMPI's ``mpirun`` (real launcher, mpi4py): ranks from MPI, DDP over gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.test_slurm import TRAIN, loaded_weights, local_reference

#: the line the README shows; --oversubscribe because this machine has fewer cores than processes
MPIRUN = ("--allow-run-as-root", "--oversubscribe", "-x", "OMP_NUM_THREADS=1")


def _mpirun(mpirun: str, np: int, out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [mpirun, *MPIRUN, "-np", str(np), sys.executable, str(TRAIN), str(out), "--devices", str(np), *args],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.timeout(500)
@pytest.mark.parametrize("np", [2, 4])
def test_mpirun_trains_ddp_saves_and_resumes(mpirun: str, tmp_path: Path, np: int) -> None:
    """MPIEnvironment is detected, DDP trains to the weights of fabric's own launcher with as many
    processes (bit for bit), and the checkpoint loads on one process and resumes under mpirun."""
    out = tmp_path / "mpi"
    run = _mpirun(mpirun, np, out)
    assert run.returncode == 0, run.stdout + run.stderr
    ranks = [json.loads((out / f"result{rank}-0.json").read_text()) for rank in range(np)]
    assert {r["environment"] for r in ranks} == {"MPIEnvironment"}
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(rank, np) for rank in range(np)]
    assert loaded_weights(out) == local_reference(tmp_path / "local", np, [])
    if np == 2:  # the checkpoints it saved every 4 steps: a longer run resumes from step 12
        run = _mpirun(mpirun, np, out, "--steps", "16")
        assert run.returncode == 0, run.stdout + run.stderr
        again = [json.loads((out / f"result{rank}-0.json").read_text()) for rank in range(np)]
        assert [(r["resumed_from"], r["step"]) for r in again] == [(12, 16)] * np


@pytest.mark.timeout(300)
def test_a_failing_rank_ends_the_mpi_job_nonzero(mpirun: str, tmp_path: Path) -> None:
    start = time.monotonic()
    run = _mpirun(mpirun, 2, tmp_path, "--steps", "100000", "--sleep", "0.1", "--fail-rank", "1")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "deliberate failure on rank 1" in output
    assert time.monotonic() - start < 200, output
