"""Stop a run at a loss spike and record which batches to skip on resume (Lightning's ``SpikeDetection``).

Used as a callback: ``Fabric(callbacks=[SpikeDetection()])`` and, after each step,
``fabric.call("on_train_batch_end", fabric=fabric, loss=loss, batch=batch, batch_idx=i)``. Each
process compares its own loss with the running mean of its last ``window`` losses; if any process
sees a spike, every process raises :class:`TrainingSpikeException` at the same step (one collective
decides), and rank 0 writes the indices of this batch and the previous one to a JSON file, so the
resumed run can leave them out. The current batch may hold bad data; the previous one may have
pushed the weights somewhere bad, so both are skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from typing import Any, Literal

__all__ = ["SpikeDetection", "TrainingSpikeException"]

_FILE_NAME = "skip_batches.json"


class TrainingSpikeException(RuntimeError):
    """Raised on every process when a loss spike was detected in batch ``batch_idx``."""

    def __init__(self, batch_idx: int, *args: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args)
        self.batch_idx = batch_idx


class SpikeDetection:
    """Raise :class:`TrainingSpikeException` when the loss jumps away from its running mean.

    Args:
        mode: ``"min"`` when the loss should fall (a rise may be a spike), ``"max"`` when it should rise.
        window: how many of the last losses (that were not spikes) make the running mean.
        warmup: batches (by ``batch_idx``) before the first check.
        atol: a loss is a spike only if it is at least this far from the running mean (``None``: no limit).
        rtol: ... and at least ``rtol`` times the running mean away from it (``None``: no limit).
        exclude_batches_path: directory (or ``.json`` file) for the batches to skip; default: the working
            directory, file ``skip_batches.json``.
        finite_only: a non-finite loss (NaN, inf) is a spike. With ``False``, non-finite losses are not
            compared and, when any process has one, do not enter the running mean.

    Example::

        fabric = Fabric(callbacks=[SpikeDetection(window=20, rtol=2.0)])
        ...
        fabric.call("on_train_batch_end", fabric=fabric, loss=loss, batch=batch, batch_idx=i)
    """

    def __init__(
        self,
        mode: Literal["min", "max"] = "min",
        window: int = 10,
        warmup: int = 1,
        atol: float | None = None,
        rtol: float | None = 2.0,
        exclude_batches_path: str | os.PathLike[str] | None = None,
        finite_only: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"SpikeDetection(mode={mode!r}): use 'min' (the loss should fall) or 'max'.")
        if window < 1:
            raise ValueError(
                f"SpikeDetection(window={window}): the running mean needs a window of 1 or more."
            )
        self.mode = mode
        self.window = window
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only
        self.last_val = 0.0
        self.bad_batches: list[int] = []
        self._recent: deque[float] = deque(maxlen=window)

    def on_train_batch_end(self, fabric: Any, loss: Any, batch: Any, batch_idx: int) -> None:
        """Check ``loss`` (a number or a one-element tensor) of batch ``batch_idx``; every process calls it."""
        value = float(loss)
        spike = batch_idx >= self.warmup and self._is_spike(value)
        if fabric.strategy.reduce_boolean_decision(spike, all=False):  # a spike on any process stops all
            self._handle_spike(fabric, batch_idx)
        if self.finite_only or fabric.strategy.reduce_boolean_decision(math.isfinite(value), all=True):
            self._recent.append(value)
            self.last_val = value

    def _is_spike(self, value: float) -> bool:
        if not math.isfinite(value):
            return self.finite_only
        change = value - self.last_val
        if (change <= 0) if self.mode == "min" else (change >= 0):
            return False  # an improvement over the last loss is never a spike
        if not self._recent:
            return False  # nothing to compare with yet
        mean = sum(self._recent) / len(self._recent)
        distance = abs(value - mean)
        within_atol = self.atol is not None and distance < abs(self.atol)
        within_rtol = self.rtol is not None and distance < abs(self.rtol * mean)
        return not (within_atol or within_rtol)

    def _handle_spike(self, fabric: Any, batch_idx: int) -> None:
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        if fabric.global_rank == 0:
            path = self._file()
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            # beside the target, then renamed over it: a crash leaves the old list or the new one, never half
            partial = f"{path}.{os.getpid()}.partial"
            with open(partial, "w") as file:
                json.dump(self.bad_batches, file, indent=4)
            os.replace(partial, path)
        raise TrainingSpikeException(batch_idx=batch_idx)

    def _file(self) -> str:
        path = os.fspath(self.exclude_batches_path) if self.exclude_batches_path is not None else os.getcwd()
        return path if path.endswith(".json") else os.path.join(path, _FILE_NAME)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue detecting after a resume (settings, last loss, the window)."""
        return {
            "mode": self.mode,
            "window": self.window,
            "warmup": self.warmup,
            "atol": self.atol,
            "rtol": self.rtol,
            "finite_only": self.finite_only,
            "last_val": self.last_val,
            "recent": list(self._recent),
            "bad_batches": list(self.bad_batches),
            "bad_batches_path": None
            if self.exclude_batches_path is None
            else os.fspath(self.exclude_batches_path),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name in ("mode", "window", "warmup", "atol", "rtol", "finite_only", "last_val"):
            if name in state_dict:
                setattr(self, name, state_dict[name])
        self.bad_batches = list(state_dict.get("bad_batches", []))
        self.exclude_batches_path = state_dict.get("bad_batches_path", self.exclude_batches_path)
        self._recent = deque(state_dict.get("recent", []), maxlen=self.window)
