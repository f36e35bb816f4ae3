"""Throughput, ThroughputMonitor and measure_flops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fabric import Fabric
from fabric.loggers import CSVLogger
from fabric.utilities import Throughput, ThroughputMonitor, measure_flops


def test_measure_flops_of_a_linear_layer() -> None:
    with torch.device("meta"):
        model = nn.Linear(32, 16, bias=False)
        x = torch.randn(4, 32)
    forward = measure_flops(model, lambda: model(x))
    assert forward == 2 * 4 * 32 * 16
    # backward: the weight's gradient costs as much as the forward; the input's too when it needs one
    assert measure_flops(model, lambda: model(x), lambda y: y.sum()) == 2 * forward
    x.requires_grad_(True)
    assert measure_flops(model, lambda: model(x), lambda y: y.sum()) == 3 * forward


def test_rates_over_the_window() -> None:
    throughput = Throughput(available_flops=100.0, world_size=2, window_size=3)
    throughput.update(time=1.0, batches=1, samples=4, lengths=40, flops=10)
    assert throughput.compute() == {"time": 1.0, "batches": 1, "samples": 4, "lengths": 40}
    throughput.update(time=2.0, batches=2, samples=8, lengths=80, flops=10)
    throughput.update(time=3.0, batches=3, samples=12, lengths=120, flops=10)
    metrics = throughput.compute()
    assert metrics["device/batches_per_sec"] == pytest.approx(1.0)
    assert metrics["device/samples_per_sec"] == pytest.approx(4.0)
    assert metrics["device/items_per_sec"] == pytest.approx(40.0)
    assert metrics["samples_per_sec"] == pytest.approx(8.0)
    assert metrics["items_per_sec"] == pytest.approx(80.0)
    # 10 FLOPs per device per update; the window's first update is before its first time stamp
    assert metrics["device/flops_per_sec"] == pytest.approx(10.0)
    assert metrics["flops_per_sec"] == pytest.approx(20.0)
    assert metrics["device/mfu"] == pytest.approx(0.1)


def test_bad_updates_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="window_size=1"):
        Throughput(window_size=1)
    throughput = Throughput(window_size=2)
    throughput.update(time=1.0, batches=1, samples=1)
    with pytest.raises(ValueError, match="running totals"):
        throughput.update(time=0.5, batches=2, samples=2)
    with pytest.raises(ValueError, match="samples must be at least batches"):
        throughput.update(time=2.0, batches=3, samples=2)
    throughput.reset()
    assert throughput.compute() == {}


def test_bad_updates_use_lightnings_words_too() -> None:
    """Code that matches Lightning's messages (its own tests do) keeps matching."""
    throughput = Throughput()
    throughput.update(time=2.0, batches=1, samples=2)
    with pytest.raises(RuntimeError, match="same number of samples"):
        throughput.update(time=2.1, batches=2, samples=3, lengths=4)
    throughput = Throughput(window_size=2)
    throughput.update(time=2.5, batches=2, samples=4, lengths=8)
    with pytest.raises(ValueError, match="Expected the value to increase"):
        throughput.update(time=2.5, batches=3, samples=4, lengths=8)
    with pytest.raises(ValueError, match=r"samples.*to be greater or equal than batches"):
        Throughput().update(time=0, batches=2, samples=1)
    with pytest.raises(ValueError, match=r"lengths.*to be greater or equal than samples"):
        Throughput().update(time=0, batches=2, samples=2, lengths=1)


def test_monitor_logs_through_fabric(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name=None, version="tp")
    fabric = Fabric(accelerator="cpu", loggers=logger)
    monitor = ThroughputMonitor(fabric, window_size=2, available_flops=1e9)
    assert monitor.world_size == 1
    monitor.update(time=0.5, batches=1, samples=8, flops=1e6)
    monitor.update(time=1.0, batches=2, samples=16, flops=1e6)
    metrics = monitor.compute_and_log()
    assert monitor.step == 0
    assert metrics["device/samples_per_sec"] == pytest.approx(16.0)
    assert metrics["device/mfu"] == pytest.approx(2e-3)
    logger.finalize("success")
    header = (tmp_path / "tp" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "device/samples_per_sec" in header
    # on CPU the peak is unknown: no MFU unless given
    assert ThroughputMonitor(fabric).available_flops is None
