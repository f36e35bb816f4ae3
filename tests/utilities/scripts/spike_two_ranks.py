"""Two ranks, one spike on rank 1 only; then is_shared_filesystem: ``python spike_two_ranks.py OUT_DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fabric import Fabric
from fabric.utilities import SpikeDetection, TrainingSpikeException, is_shared_filesystem


def main() -> None:
    out = Path(sys.argv[1])
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    fabric.launch()
    detector = SpikeDetection(exclude_batches_path=out / "skip")
    losses = [2.0, 1.9, 1.8, 1.75, 1.7, 1.65, 1.6, 1.55]
    if fabric.global_rank == 1:
        losses[6] = 50.0
    stopped_at = None
    for index, loss in enumerate(losses):
        try:
            detector.on_train_batch_end(fabric, torch.tensor(loss), None, index)
        except TrainingSpikeException as error:
            stopped_at = error.batch_idx
            break
    mine = out / f"own{fabric.global_rank}"
    mine.mkdir()
    try:
        is_shared_filesystem(fabric.strategy, out / "missing")
        missing = None
    except FileNotFoundError as error:
        missing = type(error).__name__
    result = {
        "stopped_at": stopped_at,
        "shared": is_shared_filesystem(fabric.strategy, out),
        "different_paths_shared": is_shared_filesystem(fabric.strategy, mine),
        "missing": missing,
    }
    (out / f"rank{fabric.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
