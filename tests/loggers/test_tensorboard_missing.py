"""TensorBoardLogger where tensorboard is not installed: the error says so, not that a metric is bad."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fabric.loggers import TensorBoardLogger

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None, reason="checks the message shown without tensorboard"
)


def test_log_metrics_without_tensorboard_names_the_missing_package(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
        logger.log_metrics({"loss": 1.0}, step=0)
