"""Interrupted SLURM jobs that requeue and resume: pre-emption signals and a failed node.

Each run is compared with one uninterrupted job, bit for bit. In a file of their own so that
`nox -s cluster` (pytest-xdist, ``--dist loadfile``) runs them beside the other SLURM tests, on a
cluster of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.services import SlurmCluster
from tests.cluster.test_slurm import (
    _ENDED,
    batch_script,
    job,
    loaded_weights,
    output,
    results,
    submit,
    wait_for_end,
    wait_for_files,
)

#: the interrupted runs (pre-emption, node failure) and their uninterrupted reference: 2 nodes x 1 task.
#: One task per node: with 2 ranks a sum does not depend on its order; with 4 the first step after a
#: resume differs in the last bits (DDP regroups its gradient buckets after its first step, changing the
#: order in which gloo sums), so a bit-for-bit comparison with DDP's defaults needs 2 ranks. Verified:
#: with DDP(find_unused_parameters=True), which never regroups, 4 ranks resume bit for bit (the 2 x 2
#: --max-restarts test in test_two_hosts.py).
STEPS = 40
TASKS = 1
WORLD = 2 * TASKS


@pytest.fixture(scope="module")
def uninterrupted(slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The weights of the same job run to the end without interruption (one job, shared by the tests
    that interrupt it; saving checkpoints does not change the training, so ``--every`` may differ)."""
    reference = tmp_path_factory.mktemp("uninterrupted")
    reference.chmod(0o777)
    job_id = submit(slurm, batch_script(reference, 2, TASKS, f"--steps {STEPS} --every 1000"), reference)
    assert wait_for_end(slurm, job_id, reference, 240)["JobState"] == "COMPLETED", output(reference)
    return loaded_weights(reference)


def assert_resumed(out: Path, job_id: str, info: dict[str, str], uninterrupted: list[float]) -> int:
    """The job ran twice: the requeued run resumed from a checkpoint of the first and ended with the
    uninterrupted run's weights, bit for bit. Returns the step it resumed from."""
    log = output(out)
    assert info["JobState"] == "COMPLETED", (info, log)
    assert info["Restarts"] == "1", (info, log)
    second = results(out, WORLD, restart=1)
    resumed = {r["resumed_from"] for r in second}
    assert len(resumed) == 1, (second, log)
    step = resumed.pop()
    assert 0 < step < STEPS, (second, log)
    assert all(r["step"] == STEPS and not r["stopped"] for r in second), (second, log)
    assert loaded_weights(out) == uninterrupted
    return step


@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["scancel", "batch-signal"])
def test_preemption_saves_requeues_and_resumes_to_the_uninterrupted_weights(
    slurm: SlurmCluster, out: Path, how: str, uninterrupted: list[float]
) -> None:
    """SIGUSR1 mid-run (`scancel --signal=USR1`, or `sbatch --signal=B:USR1@110` near the time limit): every
    rank stops at the same step and saves, rank 0 runs `scontrol requeue`, the requeued job resumes from
    the checkpoint and ends with the weights of an uninterrupted run, bit for bit."""
    common = f"--steps {STEPS} --every 1000"
    if how == "scancel":
        script = batch_script(out, 2, TASKS, f"{common} --sleep 0.5")
    else:  # SLURM signals the batch shell 110 s before the 2-minute limit; the shell passes it on to srun.
        # slurmctld checks time limits every 30 s, so the signal comes 10-40 s after the start: the
        # first run must still be training by then (40 steps of 1.5 s). The requeued run has the same
        # limit: 2 minutes leave it room on a loaded machine (with 1 it was killed there once).
        script = batch_script(
            out,
            2,
            TASKS,
            f"{common} --sleep 1.5",
            "#SBATCH --time=2\n#SBATCH --signal=B:USR1@110\n",
            forward=True,
        )
    job_id = submit(slurm, script, out)
    wait_for_files(out, [f"pid{rank}" for rank in range(WORLD)], 240, slurm, job_id)
    if how == "scancel":
        time.sleep(2)
        subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm.env, check=True, timeout=30)
    info = wait_for_end(slurm, job_id, out, 300)
    assert f"[fabric] requeued SLURM job {job_id}" in output(out)
    first = [p for p in (out / f"result{rank}-0.json" for rank in range(WORLD)) if p.exists()]
    stops = {json.loads(p.read_text())["step"] for p in first}  # those ranks that wrote before the requeue
    resumed_from = assert_resumed(out, job_id, info, uninterrupted)
    assert stops <= {resumed_from}


# ------------------------------------------------------------------------------------ failures
@pytest.mark.timeout(400)
def test_a_failed_node_requeues_the_job_which_resumes_to_the_uninterrupted_weights(
    slurm: SlurmCluster, out: Path, uninterrupted: list[float]
) -> None:
    """The second node fails mid-run under `sbatch --requeue`: its processes are killed (SIGKILL) and the
    node is marked DOWN, as slurmctld does itself once the node stops answering (`SlurmdTimeout`; done
    here at once to keep the test short). SLURM requeues the job (NODE_FAIL); once the node is back the
    job resumes from its newest checkpoint and ends with the uninterrupted run's weights, bit for bit."""
    job_id = submit(slurm, batch_script(out, 2, TASKS, f"--steps {STEPS} --every 5 --sleep 0.3"), out)
    wait_for_files(out, [f"pid{rank}" for rank in range(WORLD)], 240, slurm, job_id)
    deadline = time.monotonic() + 120
    while not any((out / "checkpoints").glob("step-*.ckpt")):  # killed after a checkpoint, mid-run
        assert time.monotonic() < deadline and job(slurm, job_id).get("JobState") == "RUNNING", output(out)
        time.sleep(0.2)
    time.sleep(1)
    node = slurm.nodes[1]
    try:
        for rank in range(WORLD // 2, WORLD):  # the second node's ranks
            os.kill(json.loads((out / f"pid{rank}").read_text())["pid"], signal.SIGKILL)
        down = subprocess.run(
            ["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=fabric test: node lost"],
            env=slurm.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        deadline = time.monotonic() + 120
        while (info := job(slurm, job_id)).get("Restarts") != "1":
            assert time.monotonic() < deadline and info.get("JobState") not in _ENDED, (info, output(out))
            time.sleep(0.5)
    finally:  # the node comes back (ReturnToService would do it when a real slurmd re-registers)
        subprocess.run(
            ["scontrol", "update", f"NodeName={node}", "State=RESUME"],
            env=slurm.env,
            capture_output=True,
            timeout=30,
        )
    info = wait_for_end(slurm, job_id, out, 300)
    assert_resumed(out, job_id, info, uninterrupted)
    assert not (out / "result0-0.json").exists()  # the first run did not finish
