"""Throughput and model-FLOPs utilization: ``Throughput``, ``ThroughputMonitor``, ``measure_flops``.

The names and arguments are Lightning Fabric's (``lightning.fabric.utilities.throughput``), so a script
that uses them ports by changing its import. The counting is ``torch.utils.flop_counter``'s.

A typical loop::

    with torch.device("meta"):
        meta_model = Model()
        x = torch.randint(0, 100, (batch_size, 128), device="meta")
    flops_per_batch = measure_flops(meta_model, lambda: meta_model(x), lambda y: y.sum())

    monitor = ThroughputMonitor(fabric, window_size=10)
    t0 = time.perf_counter()
    for step, batch in enumerate(loader):
        ...
        monitor.update(time=time.perf_counter() - t0, batches=step + 1, samples=(step + 1) * batch_size,
                       lengths=(step + 1) * batch_size * 128, flops=flops_per_batch)
        metrics = monitor.compute_and_log(step=step)   # samples/s, tokens/s, FLOPs/s, MFU
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from fabric.utilities.peak_flops import get_available_flops

if TYPE_CHECKING:
    from fabric.fabric import Fabric


def measure_flops(
    model: torch.nn.Module,
    forward_fn: Callable[[], torch.Tensor],
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Count the FLOPs of one call of ``forward_fn`` (and of the backward of ``loss_fn`` of its output).

    Build the model and inputs on the ``meta`` device to count without allocating memory or computing.
    With ``loss_fn`` the count includes the backward pass (about three times the forward), which is
    what a training step costs.

    Example::

        with torch.device("meta"):
            model = MyModel()
            x = torch.randn(2, 32, device="meta")
        fwd_and_bwd = measure_flops(model, lambda: model(x), lambda y: y.sum())
    """

    counter = FlopCounterMode(display=False)
    with counter:
        if loss_fn is None:
            forward_fn()
        else:
            loss_fn(forward_fn()).backward()
    return counter.get_total_flops()


class _MonotonicWindow(deque):
    """A fixed-size window of cumulative counters that must grow with every append."""

    def __init__(self, maxlen: int) -> None:
        super().__init__(maxlen=maxlen)

    def append(self, value: Any) -> None:
        if self and value <= self[-1]:
            raise ValueError(
                f"Throughput.update: Expected the value to increase, last: {self[-1]}, current: {value}. "
                "`time`, `batches`, `samples` and `lengths` are running totals since the start, not per step."
            )
        super().append(value)


class Throughput:
    """Compute throughput over a sliding window of running totals: batches/s, samples/s, items/s, FLOP/s, MFU.

    Call ``update`` after each step with running totals (the elapsed time and the counts since the
    start), then ``compute`` for a dict of metrics. The rates need ``window_size`` updates; before
    that only the totals are returned.

    Keys: ``time``, ``batches``, ``samples`` (and ``lengths``) totals; ``device/batches_per_sec``,
    ``device/samples_per_sec``, ``device/items_per_sec`` (tokens/s when lengths are tokens),
    ``device/flops_per_sec`` and ``device/mfu`` (when ``available_flops`` is known) for this device;
    with ``world_size > 1`` also the same rates without the ``device/`` prefix, for all devices.

    Args:
        available_flops: the device's peak FLOP/s, for MFU; ``None`` leaves MFU out.
        world_size: the number of devices, to turn per-device rates into global ones.
        window_size: how many updates the rates are averaged over (at least 2).
        separator: between ``device`` and the metric name.
    """

    def __init__(
        self,
        available_flops: float | None = None,
        world_size: int = 1,
        window_size: int = 100,
        separator: str = "/",
    ) -> None:
        if window_size < 2:
            raise ValueError(
                f"Throughput(window_size={window_size!r}): must be at least 2, since a rate needs two points."
            )
        if world_size < 1:
            raise ValueError(f"Throughput(world_size={world_size!r}): must be a positive integer.")
        self.available_flops = available_flops
        self.world_size = world_size
        self.separator = separator
        self._time: _MonotonicWindow = _MonotonicWindow(maxlen=window_size)
        self._batches: _MonotonicWindow = _MonotonicWindow(maxlen=window_size)
        self._samples: _MonotonicWindow = _MonotonicWindow(maxlen=window_size)
        self._lengths: _MonotonicWindow = _MonotonicWindow(maxlen=window_size)
        self._flops: deque[float] = deque(maxlen=window_size)

    def update(
        self,
        *,
        time: float,
        batches: int,
        samples: int,
        lengths: int | None = None,
        flops: float | None = None,
    ) -> None:
        """Record running totals.

        Args:
            time: seconds elapsed since the start (a running total).
            batches: batches processed so far on this device.
            samples: samples processed so far on this device.
            lengths: items (e.g. tokens) processed so far on this device.
            flops: FLOPs of this device since the previous ``update`` (e.g. ``measure_flops`` of one
                training step times the steps since then).
        """
        if samples < batches:
            raise ValueError(
                f"Throughput.update(samples={samples}, batches={batches}): samples must be at least batches"
                f" (expected samples ({samples}) to be greater or equal than batches ({batches}))."
            )
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            if lengths < samples:
                raise ValueError(
                    f"Throughput.update(lengths={lengths}, samples={samples}): lengths must be at least samples"
                    f" (expected lengths ({lengths}) to be greater or equal than samples ({samples}))."
                )
            self._lengths.append(lengths)
            if len(self._lengths) != len(self._samples):
                raise RuntimeError(
                    "Throughput.update: `lengths` was passed in some calls and not in others: if lengths are"
                    f" passed ({len(self._lengths)}), there needs to be the same number of samples"
                    f" ({len(self._samples)}). Pass it every time or never."
                )
        if flops is not None:
            self._flops.append(flops * self.world_size)  # all devices together

    def compute(self) -> dict[str, int | float]:
        """The metrics over the current window (see the class docstring for the keys)."""
        if not self._time:
            return {}
        metrics: dict[str, int | float] = {
            "time": self._time[-1],
            "batches": self._batches[-1],
            "samples": self._samples[-1],
        }
        if self._lengths:
            metrics["lengths"] = self._lengths[-1]
        full = len(self._time) == self._time.maxlen
        many = self.world_size > 1
        dev = f"device{self.separator}"
        if full:
            elapsed = self._time[-1] - self._time[0]
            batches_per_sec = (self._batches[-1] - self._batches[0]) / elapsed
            samples_per_sec = (self._samples[-1] - self._samples[0]) / elapsed
            metrics[f"{dev}batches_per_sec"] = batches_per_sec
            metrics[f"{dev}samples_per_sec"] = samples_per_sec
            if many:
                metrics["batches_per_sec"] = batches_per_sec * self.world_size
                metrics["samples_per_sec"] = samples_per_sec * self.world_size
            if len(self._lengths) == self._lengths.maxlen:
                items_per_sec = (self._lengths[-1] - self._lengths[0]) / elapsed
                metrics[f"{dev}items_per_sec"] = items_per_sec
                if many:
                    metrics["items_per_sec"] = items_per_sec * self.world_size
        if len(self._flops) == self._flops.maxlen:
            elapsed = self._time[-1] - self._time[0]
            # the first entry's FLOPs were spent before the window's first time stamp
            flops_per_sec = (sum(self._flops) - self._flops[0]) / elapsed
            if many:
                metrics["flops_per_sec"] = flops_per_sec
            metrics[f"{dev}flops_per_sec"] = flops_per_sec / self.world_size
            if self.available_flops:
                metrics[f"{dev}mfu"] = flops_per_sec / self.world_size / self.available_flops
        return metrics

    def reset(self) -> None:
        """Forget every update (e.g. after a pause that should not count)."""
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()


class ThroughputMonitor(Throughput):
    """``Throughput`` bound to a ``Fabric``: world size and the device's peak FLOP/s come from it; rank 0 logs.

    ``update``, ``compute`` and ``compute_and_log`` do their work on global rank 0 only (elsewhere they
    do nothing and return ``{}``). ``compute_and_log`` sends the metrics through ``fabric.log_dict``.

    Args:
        fabric: a launched ``Fabric``.
        available_flops: the device's peak FLOP/s; by default looked up for known CUDA GPUs in the
            precision's compute dtype (``None`` on CPU, so MFU is left out unless you pass a figure).
        **kwargs: ``window_size``, ``separator`` (see ``Throughput``).

    Example::

        monitor = ThroughputMonitor(fabric)
        monitor.update(time=elapsed, batches=step + 1, samples=(step + 1) * batch_size, flops=flops_per_batch)
        monitor.compute_and_log(step=step)
    """

    def __init__(self, fabric: Fabric, available_flops: float | None = None, **kwargs: Any) -> None:
        if available_flops is None:
            available_flops = get_available_flops(fabric.device, _compute_dtype(fabric))
        super().__init__(available_flops=available_flops, world_size=fabric.world_size, **kwargs)
        self._fabric = fabric
        self._rank_zero = fabric.global_rank == 0
        self.step = -1

    def update(self, **kwargs: Any) -> None:  # type: ignore[override]
        if self._rank_zero:
            super().update(**kwargs)

    def compute(self) -> dict[str, int | float]:
        return super().compute() if self._rank_zero else {}

    def reset(self) -> None:
        if self._rank_zero:
            super().reset()

    def compute_and_log(self, step: int | None = None, **kwargs: Any) -> dict[str, int | float]:
        """Compute the metrics (plus ``kwargs``) and log them with ``fabric.log_dict`` at ``step``.

        ``step`` defaults to one more than the last step logged.
        """
        self.step = self.step + 1 if step is None else step
        if not self._rank_zero:
            return {}
        metrics = {**self.compute(), **kwargs}
        self._fabric.log_dict(metrics, step=self.step)
        return metrics


def _compute_dtype(fabric: Fabric) -> torch.dtype:
    """The dtype the matmuls run in under the fabric's precision setting."""
    precision = str(fabric.strategy.precision.precision)
    for key, dtype in (("bf16", torch.bfloat16), ("16", torch.float16), ("64", torch.float64)):
        if key in precision:
            return dtype
    return torch.float32
