"""SpikeDetection: Lightning's decisions on the same losses, every rank stops together, resumable state."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from fabric import Fabric
from fabric.utilities import SpikeDetection, TrainingSpikeException
from tests.strategies.multiprocess import run_python

SCRIPT = Path(__file__).parent / "scripts" / "spike_two_ranks.py"


def _first_spike(fabric: object, detector: object, losses: list[float]) -> int | None:
    for index, loss in enumerate(losses):
        try:
            detector.on_train_batch_end(fabric, torch.tensor(loss), None, index)  # type: ignore[attr-defined]
        except Exception as error:
            assert type(error).__name__ == "TrainingSpikeException", error
            return index
    return None


def _losses(seed: int) -> list[float]:
    rng = random.Random(seed)
    losses = [3.0 * math.exp(-0.05 * step) + rng.uniform(-0.2, 0.2) for step in range(60)]
    if seed % 3 == 0:
        losses[rng.randrange(5, 60)] *= rng.choice([2.5, 4.0, 10.0])
    if seed % 3 == 1:
        losses[rng.randrange(5, 60)] = rng.choice([math.nan, math.inf])
    return losses


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    "settings",
    [{}, {"window": 3, "rtol": 0.5}, {"atol": 1.0, "rtol": None}, {"mode": "max", "warmup": 3}],
    ids=["defaults", "window3-rtol", "atol", "max"],
)
def test_same_decisions_as_lightning_on_the_same_losses(tmp_path: Path, seed: int, settings: dict) -> None:
    from lightning.fabric import Fabric as LightningFabric
    from lightning.fabric.utilities.spike import SpikeDetection as LightningSpikeDetection

    losses = _losses(seed)
    theirs = _first_spike(
        LightningFabric(accelerator="cpu", devices=1),
        LightningSpikeDetection(exclude_batches_path=tmp_path / "theirs", **settings),
        losses,
    )
    ours = _first_spike(
        Fabric(accelerator="cpu", devices=1),
        SpikeDetection(exclude_batches_path=tmp_path / "ours", **settings),
        losses,
    )
    assert ours == theirs
    if ours is not None:
        written = json.loads((tmp_path / "ours" / "skip_batches.json").read_text())
        assert (
            written == json.loads((tmp_path / "theirs" / "skip_batches.json").read_text()) == [ours - 1, ours]
        )


def test_a_spike_raises_through_fabric_call_and_the_state_resumes(tmp_path: Path) -> None:
    detector = SpikeDetection(window=4, exclude_batches_path=tmp_path / "skip.json")
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[detector])
    for index, loss in enumerate([2.0, 1.9, 1.8, 1.85]):
        fabric.call("on_train_batch_end", fabric=fabric, loss=torch.tensor(loss), batch=None, batch_idx=index)
    resumed = SpikeDetection()
    resumed.load_state_dict(detector.state_dict())
    assert resumed.state_dict() == detector.state_dict()
    for candidate in (detector, resumed):
        with pytest.raises(TrainingSpikeException, match="batch 4") as raised:
            candidate.on_train_batch_end(fabric, torch.tensor(9.0), None, 4)
        assert raised.value.batch_idx == 4
    assert json.loads((tmp_path / "skip.json").read_text()) == [3, 4]


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="mode='mean'"):
        SpikeDetection(mode="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window=0"):
        SpikeDetection(window=0)


@pytest.mark.timeout(120)
def test_two_ranks_stop_at_the_same_batch_and_share_a_file_system(tmp_path: Path) -> None:
    run = run_python([str(SCRIPT), str(tmp_path)], timeout=110)
    assert run.returncode == 0, run.output
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # rank 1 alone sees the spike at batch 6; both ranks raise there
    assert [result["stopped_at"] for result in results] == [6, 6]
    assert json.loads((tmp_path / "skip" / "skip_batches.json").read_text()) == [5, 6]
    for result in results:
        assert result["shared"] is True  # both processes see the same tmp directory
        assert result["different_paths_shared"] is False  # each rank names its own directory
        assert result["missing"] == "FileNotFoundError"
    assert not list(tmp_path.glob(".fabric-shared-fs-check-*"))  # the marker files are removed
