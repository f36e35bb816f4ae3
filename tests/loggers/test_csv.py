"""CSVLogger: file layout, Lightning's naming, resume without losing rows, rank 0 only."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import torch

from fabric import Fabric
from fabric.loggers import CSVLogger
from fabric.utilities.rank_zero import global_rank, set_global_rank


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_and_versions(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, name="exp")
    assert first.version == 0
    assert first.root_dir == str(tmp_path / "exp")
    assert first.log_dir == str(tmp_path / "exp" / "version_0")
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("success")
    assert CSVLogger(tmp_path, name="exp").version == 1
    assert CSVLogger(tmp_path, name="exp", version="custom").log_dir == str(tmp_path / "exp" / "custom")


@pytest.mark.parametrize("name", [None, ""])
def test_name_none_puts_versions_under_root(tmp_path: Path, name: str | None) -> None:
    logger = CSVLogger(tmp_path, name=name)
    assert logger.name == ""
    assert logger.log_dir == str(tmp_path / "version_0")
    logger.log_metrics({"a": 1}, step=0)
    logger.save()
    assert (tmp_path / "version_0" / "metrics.csv").is_file()


def test_experiment_is_the_writer(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp")
    experiment = logger.experiment
    assert experiment is logger.experiment
    assert experiment.metrics_file_path == str(tmp_path / "exp" / "version_0" / "metrics.csv")
    experiment.log_metrics({"x": torch.tensor(2.0)}, step=5)
    assert experiment.metrics == [{"step": 5, "x": 2.0}]
    logger.save()
    assert experiment.metrics == []
    assert _rows(Path(experiment.metrics_file_path)) == [{"step": "5", "x": "2.0"}]


def test_experiment_on_other_ranks_does_nothing(tmp_path: Path) -> None:
    previous = global_rank()
    set_global_rank(1)
    try:
        logger = CSVLogger(tmp_path, name="exp")
        logger.experiment.log_metrics({"x": 1.0})  # accepted and ignored
        logger.log_metrics({"x": 1.0}, step=0)
        logger.log_hyperparams({"lr": 0.1})
        logger.finalize("success")
    finally:
        set_global_rank(previous)
    assert not (tmp_path / "exp").exists()


def test_new_metric_widens_header_without_shifting(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp", flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": 0.5, "acc": 0.7}, step=1)
    rows = _rows(Path(logger.log_dir) / "metrics.csv")
    assert rows == [{"step": "0", "loss": "1.0", "acc": ""}, {"step": "1", "loss": "0.5", "acc": "0.7"}]


def test_resume_into_same_directory_appends(tmp_path: Path) -> None:
    """Issue 8: a run resumed into its version directory must keep the rows logged before."""
    first = CSVLogger(tmp_path, name="exp", version=0)
    for step in range(3):
        first.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    first.finalize("success")

    resumed = CSVLogger(tmp_path, name="exp", version=0)
    resumed.log_metrics({"loss": 0.2}, step=3)
    resumed.finalize("success")
    rows = _rows(Path(resumed.log_dir) / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["loss"] == "1.0"

    # a new metric after resuming widens the header and still keeps every old row
    again = CSVLogger(tmp_path, name="exp", version=0)
    again.log_metrics({"loss": 0.1, "lr": 0.01}, step=4)
    again.finalize("success")
    rows = _rows(Path(again.log_dir) / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0] == {"step": "0", "loss": "1.0", "lr": ""}
    assert rows[4] == {"step": "4", "loss": "0.1", "lr": "0.01"}


def test_flush_every_n_and_prefix(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp", prefix="train", flush_logs_every_n_steps=2)
    logger.log_metrics({"loss": 1.0})
    path = Path(logger.log_dir) / "metrics.csv"
    assert not path.exists()
    logger.log_metrics({"loss": 0.5})
    assert [r["train-loss"] for r in _rows(path)] == ["1.0", "0.5"]
    assert [r["step"] for r in _rows(path)] == ["0", "1"]
    with pytest.raises(ValueError, match="flush_logs_every_n_steps=0"):
        CSVLogger(tmp_path, flush_logs_every_n_steps=0)


def test_hyperparams(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp")
    logger.log_hyperparams(argparse.Namespace(lr=0.1, batch_size=8))
    logger.log_hyperparams({"seed": 3})
    lines = (Path(logger.log_dir) / "hparams.csv").read_text().splitlines()
    assert lines == ["key,value", "lr,0.1", "batch_size,8", "seed,3"]
    with pytest.raises(TypeError, match="dict or an argparse.Namespace"):
        logger.log_hyperparams(3)


def test_through_fabric_log_dict(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name=None, version="run")
    fabric = Fabric(accelerator="cpu", loggers=logger)
    fabric.log_dict({"loss": torch.tensor(0.25)}, step=0)
    fabric.log("loss", 0.125, step=1)
    fabric.logger.finalize("success")
    assert [r["loss"] for r in _rows(tmp_path / "run" / "metrics.csv")] == ["0.25", "0.125"]
