"""The documented detection order: TorchElastic, SLURM, LSF, MPI, then Local; never Kubeflow."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fabric.environments import (
    LocalEnvironment,
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_environment,
)

TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "none",
    "RANK": "1",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "2",
    "GROUP_RANK": "0",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}
SRUN = {
    "SLURM_JOB_ID": "777",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "gpu01",
}


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def _lsf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("batch1\nh1\nh1\n")
    _set(
        monkeypatch,
        {
            "LSB_JOBID": "42",
            "LSB_DJOB_RANKFILE": str(rankfile),
            "JSM_NAMESPACE_RANK": "0",
            "JSM_NAMESPACE_SIZE": "2",
            "JSM_NAMESPACE_LOCAL_RANK": "0",
        },
    )


def test_nothing_set_is_local() -> None:
    assert type(detect_environment()) is LocalEnvironment


def test_torchrun_inside_slurm_allocation_is_torchelastic(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SRUN)
    _set(monkeypatch, TORCHRUN)
    assert type(detect_environment()) is TorchElasticEnvironment


def test_srun_is_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SRUN)
    assert type(detect_environment()) is SLURMEnvironment


def test_slurm_wins_over_lsf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _lsf(monkeypatch, tmp_path)
    _set(monkeypatch, SRUN)
    assert type(detect_environment()) is SLURMEnvironment


def test_jsrun_is_lsf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _lsf(monkeypatch, tmp_path)
    assert type(detect_environment()) is LSFEnvironment


def test_interactive_slurm_allocation_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {**SRUN, "SLURM_JOB_NAME": "bash"})
    assert type(detect_environment()) is LocalEnvironment


def test_kubeflow_is_never_detected_automatically(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        {
            "KUBERNETES_PORT": "tcp://10.96.0.1:443",
            "MASTER_ADDR": "job-master-0",
            "MASTER_PORT": "23456",
            "WORLD_SIZE": "2",
            "RANK": "1",
        },
    )
    assert type(detect_environment()) is LocalEnvironment


@pytest.mark.parametrize("scheduler", ["none", "torchrun", "srun", "lsf"])
def test_reading_an_environment_never_writes_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scheduler: str
) -> None:
    """Environment variables are written at set-up by their owner (launcher, strategy), never by a getter."""
    if scheduler == "torchrun":
        _set(monkeypatch, TORCHRUN)
    elif scheduler == "srun":
        _set(monkeypatch, SRUN)
    elif scheduler == "lsf":
        _lsf(monkeypatch, tmp_path)
        (tmp_path / "rankfile").write_text(f"batch1\n{socket.gethostname()}\n{socket.gethostname()}\n")
    before = dict(os.environ)
    env = detect_environment()
    answers = [
        env.creates_processes_externally,
        env.main_address,
        env.main_port,
        env.world_size(),
        env.global_rank(),
        env.local_rank(),
        env.node_rank(),
    ]
    assert all(answer is not None for answer in answers)
    assert dict(os.environ) == before
