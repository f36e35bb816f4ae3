"""CheckpointManager on one process: finding the newest good checkpoint, rotation, stop and requeue."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from fabric import Fabric, lifecycle
from fabric.checkpoint import reclaim
from fabric.checkpoint.manager import CheckpointManager


@pytest.fixture(autouse=True)
def fresh_lifecycle() -> None:
    lifecycle._reset_for_tests()
    yield
    lifecycle._reset_for_tests()


def _setup() -> tuple[Fabric, dict]:
    fabric = Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    return fabric, {"model": model, "optimizer": optimizer}


def test_fresh_start_then_resume_from_the_newest(tmp_path: Path) -> None:
    fabric, state = _setup()
    manager = CheckpointManager(fabric, tmp_path / "ckpts", every=2, keep_last=5)
    assert manager.resume(state) == 0
    for _ in range(5):
        with torch.no_grad():
            state["model"].weight.add_(1.0)
        assert manager.step(state) is False
    assert [step for step, _ in manager.checkpoints()] == [2, 4]
    saved = state["model"].weight.detach().clone() - 1.0  # the weights at step 4

    fabric2, state2 = _setup()
    again = CheckpointManager(fabric2, tmp_path / "ckpts", every=2)
    assert again.resume(state2) == 4
    assert again.global_step == 4
    torch.testing.assert_close(
        state2["model"].weight.detach(), saved
    )  # x + 5 - 1 may differ from x + 4 in the last bit


def test_rotation_keeps_the_last_n_and_every_kth(tmp_path: Path) -> None:
    fabric, state = _setup()
    manager = CheckpointManager(fabric, tmp_path, every=1, keep_last=2, keep_every=4)
    for _ in range(10):
        manager.step(state)
    assert [step for step, _ in manager.checkpoints()] == [4, 8, 9, 10]


def test_partial_and_corrupt_checkpoints_are_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fabric, state = _setup()
    manager = CheckpointManager(fabric, tmp_path, keep_last=10)
    good = manager.save(state, step=3)
    corrupt = manager.save(state, step=5)
    data = bytearray(Path(corrupt).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle
    Path(corrupt).write_bytes(bytes(data))
    (tmp_path / ".step-000000009.ckpt.tmp-1234").write_bytes(b"half a checkpoint")  # an interrupted save
    (tmp_path / "step-000000007.ckpt").write_bytes(b"")  # truncated to nothing
    assert manager.latest() == good
    err = capsys.readouterr().err
    assert "step-000000007.ckpt" in err and "step-000000005.ckpt" in err and ".tmp-1234" not in err
    assert manager.resume(state) == 3


def test_a_stop_request_saves_returns_true_and_requeues_on_slurm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "scontrol"
    script = Path(__file__).parent.parent / "scripts" / "scontrol_stub.py"
    stub.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SCONTROL_LOG", str(tmp_path / "log"))
    fabric, state = _setup()
    manager = CheckpointManager(fabric, tmp_path / "ckpts", every=100)
    assert manager.step(state) is False
    lifecycle.request_stop()
    assert manager.step(state) is True
    assert [step for step, _ in manager.checkpoints()] == [2]
    assert (tmp_path / "log").read_text() == "requeue 77\n"
    assert fabric.should_stop  # stays true


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"every": 0}, "every=0"), ({"keep_last": 0}, "keep_last=0"), ({"keep_every": -1}, "keep_every=-1")],
)
def test_bad_arguments_name_the_argument(tmp_path: Path, kwargs: dict, message: str) -> None:
    fabric, _ = _setup()
    with pytest.raises(ValueError, match=message):
        CheckpointManager(fabric, tmp_path, **kwargs)


def test_requeue_false_stops_without_requeueing_on_slurm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, Long runs: "On SLURM the manager then runs `scontrol requeue $SLURM_JOB_ID` on rank 0
    (`requeue=False` to opt out)"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "scontrol"
    script = Path(__file__).parent.parent / "scripts" / "scontrol_stub.py"
    stub.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SCONTROL_LOG", str(tmp_path / "log"))
    fabric, state = _setup()
    manager = CheckpointManager(fabric, tmp_path / "ckpts", every=100, requeue=False)
    lifecycle.request_stop()
    assert manager.step(state) is True
    assert [step for step, _ in manager.checkpoints()] == [1]  # still saved
    assert not (tmp_path / "log").exists()  # but scontrol was not called


def test_sharded_directories_are_verified_skipped_when_corrupt_and_rotated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README, Long runs: checkpoints are "a file, or a directory for sharded strategies"; `resume` verifies
    the newest and falls back to the next older one if it is corrupt (reported on stderr); rotation keeps
    the newest `keep_last`. Here with the sharded directory layout (what FSDP writes), on one process."""
    from typing import Literal

    from fabric.checkpoint.sharded import MANIFEST_FILE
    from fabric.strategies.single_device import SingleDeviceStrategy

    class ShardedSingleDevice(SingleDeviceStrategy):
        @property
        def checkpoint_layout(self) -> Literal["file", "sharded"]:
            return "sharded"

    fabric = Fabric(accelerator="cpu", devices=1, strategy=ShardedSingleDevice())
    module = torch.nn.Linear(2, 2)
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    state = {"model": model, "optimizer": optimizer}
    manager = CheckpointManager(fabric, tmp_path, every=1, keep_last=3)
    weights = {}
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.fill_(float(step))
        manager.step(state)
        weights[step] = model.weight.detach().clone()
    assert [step for step, _ in manager.checkpoints()] == [2, 3, 4]  # step 1's directory was rotated out
    assert all(os.path.isdir(path) for _, path in manager.checkpoints())
    visible = sorted(n for n in os.listdir(tmp_path) if not n.startswith("."))
    assert visible == [f"step-00000000{s}.ckpt" for s in (2, 3, 4)]  # gone from view at once
    reclaim.wait()  # ... and its space freed in the background
    assert sorted(os.listdir(tmp_path)) == [f"step-00000000{s}.ckpt" for s in (2, 3, 4)]

    newest = tmp_path / "step-000000004.ckpt"
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    shard.write_bytes(bytes(data))
    (tmp_path / "step-000000003.ckpt" / MANIFEST_FILE).unlink()  # a save that never finished

    with torch.no_grad():
        model.weight.zero_()
    assert manager.resume(state) == 2
    assert torch.equal(model.weight.detach(), weights[2])
    err = capsys.readouterr().err
    assert "step-000000004.ckpt" in err and "step-000000003.ckpt" in err
