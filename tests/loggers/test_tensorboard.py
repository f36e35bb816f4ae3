"""TensorBoardLogger: CSVLogger's interface, real event files, rank 0 only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fabric import Fabric
from fabric.loggers import TensorBoardLogger
from fabric.utilities.rank_zero import global_rank, set_global_rank

pytest.importorskip("tensorboard")


def _scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_scalars_through_fabric(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    assert logger.log_dir == str(tmp_path / "tb" / "version_0")
    fabric = Fabric(accelerator="cpu", loggers=logger)
    for step in range(3):
        fabric.log_dict({"loss": torch.tensor(1.0 / (step + 1)), "lr": 0.1}, step=step)
    logger.finalize("success")
    scalars = _scalars(logger.log_dir)
    assert [s for s, _ in scalars["loss"]] == [0, 1, 2]
    assert scalars["loss"][2][1] == pytest.approx(1 / 3)
    assert scalars["lr"][0][1] == pytest.approx(0.1)
    assert TensorBoardLogger(tmp_path, name="tb").version == 1


def test_hyperparams_and_layout(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name=None, version="v", sub_dir="train", prefix="p")
    assert logger.log_dir == str(tmp_path / "v" / "train")
    logger.log_hyperparams({"lr": 0.01, "model": {"layers": 2}, "act": torch.nn.ReLU})
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.finalize("success")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins
    assert "_hparams_/session_start_info" in plugins
    assert set(events.Tags()["scalars"]) == {"p-hp_metric", "p-loss"}  # the prefix applies to every metric


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    previous = global_rank()
    set_global_rank(1)
    try:
        logger = TensorBoardLogger(tmp_path, name="tb")
        logger.log_metrics({"loss": 1.0}, step=0)
        logger.log_hyperparams({"lr": 1})
        logger.experiment.add_scalar("x", 1.0)
        logger.finalize("success")
    finally:
        set_global_rank(previous)
    assert not (tmp_path / "tb").exists()


def test_bad_value_names_the_metric(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match="'loss'"):
        logger.log_metrics({"loss": "high"}, step=0)
    logger.finalize("success")


def test_import_fabric_does_not_import_tensorboard() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fabric, fabric.loggers, fabric.utilities; "
        "bad = [m for m in ('tensorboard', 'torch.utils.tensorboard', 'gymnasium', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
