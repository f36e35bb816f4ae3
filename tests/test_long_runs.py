"""Runs that survive the cluster, on real processes: pre-emption, restarts, truthful exit codes.

Every run is a fresh set of processes on 127.0.0.1 (gloo, a free port each); ``run_python`` fails the
test if a process of the run is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.strategies.multiprocess import kill_session, launch_env, run_python, wait_until_gone

SCRIPTS = Path(__file__).parent / "scripts"
LONG_RUN = SCRIPTS / "long_run.py"
EXIT_CODES = SCRIPTS / "exit_codes.py"


def _results(out: Path, world_size: int = 2) -> list[dict[str, Any]]:
    return [json.loads((out / f"result{rank}.json").read_text()) for rank in range(world_size)]


def _wait_for(path: Path, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            kill_session(process.pid)
            raise AssertionError(f"{path} never appeared; output:\n{process.communicate()[0]}")
        time.sleep(0.1)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        raise AssertionError(f"the run did not end within {timeout} s:\n{process.communicate()[0]}") from None


# --------------------------------------------------------------------------------------- pre-emption
@pytest.mark.timeout(90)
def test_a_signal_to_one_rank_saves_at_the_same_step_everywhere_and_exits_zero(tmp_path: Path) -> None:
    """SIGUSR1 to rank 1 only, mid-epoch: both ranks agree, save the same step, and end with code 0."""
    args = [sys.executable, str(LONG_RUN), str(tmp_path), "--devices", "2", "--steps", "100000"]
    process = _start([*args, "--every", "100000", "--sleep", "0.05"], launch_env())
    _wait_for(tmp_path / "pid1", 60, process)
    time.sleep(0.5)
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGUSR1)
    output = _finish(process, 60)
    assert process.returncode == 0, output
    zero, one = _results(tmp_path)
    assert zero["stopped"] and one["stopped"]
    assert zero["step"] == one["step"] > 0
    assert zero["weights"] == one["weights"]
    assert zero["checkpoints"] == [f"step-{zero['step']:09d}.ckpt"]


# ------------------------------------------------------------------------------------------- restarts
@pytest.mark.timeout(180)
def test_fabric_run_max_restarts_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed once at step 7; torchrun restarts both; the run resumes from step 4."""
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    interrupted.mkdir()
    reference.mkdir()
    common = ["--steps", "12", "--every", "4"]
    restarted = _start(
        [
            sys.executable,
            "-m",
            "fabric.cli",
            "run",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--max-restarts",
            "1",
            str(LONG_RUN),
            str(interrupted),
            *common,
            "--kill-at",
            "7",
        ],
        launch_env(),
    )
    uninterrupted = _start(
        [sys.executable, str(LONG_RUN), str(reference), "--devices", "2", *common], launch_env()
    )
    restarted_output = _finish(restarted, 170)
    reference_output = _finish(uninterrupted, 100)
    assert restarted.returncode == 0, restarted_output
    assert uninterrupted.returncode == 0, reference_output
    assert (interrupted / "killed-once").exists()
    results, expected = _results(interrupted), _results(reference)
    for result in results:
        assert (result["restart"], result["resumed_from"], result["step"]) == (1, 4, 12), result
    assert results[0]["weights"] == expected[0]["weights"] == expected[1]["weights"]


# SLURM: real runs (sbatch/srun on a two-node slurmctld + slurmd cluster) in tests/cluster/test_slurm.py


# -------------------------------------------------------------------------------- truthful exit codes
@pytest.mark.timeout(90)
def test_python_script_exits_nonzero_when_a_rank_fails_after_rank_zero_finished(tmp_path: Path) -> None:
    run = run_python([str(EXIT_CODES), "late"], timeout=80)
    assert run.returncode != 0, run.output
    assert "deliberate failure on rank 1" in run.output
    assert "local rank 1 (pid" in run.output and "exited with code 1" in run.output


@pytest.mark.timeout(90)
def test_ddp_spawn_exits_promptly_when_a_rank_raises(tmp_path: Path) -> None:
    """Rank 0 computes for a minute without a collective: the launcher must stop it, not wait."""
    run = run_python([str(EXIT_CODES), "spawn"], timeout=80)
    assert run.returncode != 0, run.output
    assert "deliberate failure on rank 1" in run.output
    assert run.seconds < 50, run.output  # start-up (imports) included; the old path waited 60 s or more


@pytest.mark.timeout(90)
def test_fabric_run_exits_nonzero_when_a_rank_fails(tmp_path: Path) -> None:
    run = run_python(
        ["-m", "fabric.cli", "run", "--accelerator", "cpu", "--devices", "2", str(EXIT_CODES), "raise"],
        timeout=80,
    )
    assert run.returncode != 0, run.output
    assert "deliberate failure on rank 1" in run.output


# ------------------------------------------------------------------------------------- hang diagnosis
@pytest.mark.timeout(90)
def test_a_skipped_collective_names_the_collective_and_its_shapes_within_the_timeout(tmp_path: Path) -> None:
    run = run_python([str(SCRIPTS / "hang.py"), "skip", str(tmp_path)], timeout=80)
    outcome = json.loads((tmp_path / "rank0.json").read_text())
    assert outcome["type"] == "CollectiveError", (outcome, run.output)
    # the first all_reduce is #1, the one rank 1 skipped is #2
    assert "collective #2 (`all_reduce`, tensors (3, 2) float32)" in outcome["error"]
    assert 14 < outcome["seconds"] < 45  # the strategy's timeout (15 s), not torch's 30 minutes
    # the report from every rank, gathered through the store: rank 1 was missing, and here is where it was
    report = outcome["error"].split("Where every rank is now", 1)[1]
    assert "rank 0 (this process): in collective #2 (`all_reduce`, tensors (3, 2) float32)" in report
    assert "rank 1: not in a collective (it has called 1 so far)" in report
    rank_one = report.split("rank 1: ", 1)[1]
    assert "in _skip_the_collective" in rank_one and "hang.py" in rank_one
    assert "no answer" not in report


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_a_timeout_in_the_gradient_communication_of_backward_comes_with_the_report(
    tmp_path: Path, kind: str
) -> None:
    """DDP's all-reduce and FSDP's reduce-scatter run inside torch's backward, not through fabric's collectives:
    the report is added to torch's error as a note, before the traceback is printed."""
    run = run_python([str(SCRIPTS / "hang.py"), f"backward-{kind}", str(tmp_path)], timeout=80)
    assert run.returncode != 0, run.output
    assert "Timed out" in run.output, run.output  # torch's own error stays first
    assert "rank 0 of 2: communication failed in backward" in run.output, run.output
    report = run.output.split("Where every rank is now", 1)[1]
    assert "rank 0 (this process): in backward" in report
    rank_one = report.split("rank 1: ", 1)[1]
    assert rank_one.startswith("not in a collective"), report
    assert "in _skip_the_backward" in rank_one and "hang.py" in rank_one
    assert "no answer" not in report


@pytest.mark.timeout(90)
def test_debug_collectives_names_the_first_mismatch_on_every_rank(tmp_path: Path) -> None:
    run = run_python(
        [str(SCRIPTS / "hang.py"), "shapes", str(tmp_path)],
        timeout=80,
        env=launch_env(FABRIC_DEBUG_COLLECTIVES="1"),
    )
    assert run.returncode == 0, run.output
    for rank in (0, 1):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert outcome["type"] == "CollectiveError", outcome
        assert "rank 1 differs from rank 0" in outcome["error"]
        assert (
            "rank 0: #2 `all_reduce` (tensors (3,) float32); rank 1: #2 `all_reduce` (tensors (4,) float32)"
            in (outcome["error"])
        )


@pytest.mark.timeout(200)
def test_a_normal_exit_waits_for_the_other_ranks_at_most_ten_seconds(tmp_path: Path) -> None:
    """README, Long runs: "a normal exit meets the other ranks for at most 10 s": rank 1 returns from its
    script while rank 0 computes for two minutes; rank 1's process is gone well before rank 0's."""
    from tests.strategies.multiprocess import is_alive

    process = _start([sys.executable, str(SCRIPTS / "exit_meeting.py"), str(tmp_path)], launch_env())
    try:
        _wait_for(tmp_path / "done1", 120, process)
        done = time.monotonic()
        rank_one, rank_zero = int((tmp_path / "pid1").read_text()), int((tmp_path / "pid0").read_text())
        assert wait_until_gone([rank_one], timeout=40) == [], "rank 1 still waits for rank 0"
        waited = time.monotonic() - done
        assert is_alive(rank_zero)  # rank 1 did not wait for rank 0 to finish
        assert waited < 30, waited  # 10 s of meeting, plus interpreter shutdown on a loaded machine
    finally:
        kill_session(process.pid)
        process.communicate()
