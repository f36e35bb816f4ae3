"""One process writes the checkpoints that the 2-process FSDP run then loads (a world-size change).

``python checkpoint_single.py OUT_DIR`` writes ``ws1_sharded/`` (FSDP with ``devices=1``: a sharded
directory written by one process) and ``plain.pt`` (a plain single-device Fabric's file), each with
``*_reference.pt``: the values they hold, for the loaders to compare with.
"""

from __future__ import annotations

import os
import sys

import torch
from common import trained, training_state

from fabric import Fabric


def main(out_dir: str) -> None:
    fsdp = Fabric(accelerator="cpu", strategy="fsdp", devices=1)
    fsdp.launch()
    model, optimizer = trained(fsdp, seed=21)
    fsdp.save(
        os.path.join(out_dir, "ws1_sharded"),
        {"model": model, "optimizer": optimizer, "step": 3, "tag": "ws1"},
    )
    torch.save(training_state(model, optimizer), os.path.join(out_dir, "ws1_reference.pt"))

    plain = Fabric(accelerator="cpu", devices=1)
    model, optimizer = trained(plain, seed=22, steps=4)
    plain.save(
        os.path.join(out_dir, "plain.pt"), {"model": model, "optimizer": optimizer, "step": 4, "tag": "plain"}
    )
    torch.save(training_state(model, optimizer), os.path.join(out_dir, "plain_reference.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
