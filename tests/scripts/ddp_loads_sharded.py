"""Two DDP processes load a sharded checkpoint directory: ``python ddp_loads_sharded.py CKPT_DIR OUT_DIR``.

The directory was written by one process in the sharded layout (model, Adam, a plain value); each rank
loads it into a fresh model and optimizer and writes what it got to ``OUT_DIR/rank{N}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fabric import Fabric


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    torch.manual_seed(99)  # other weights than the checkpoint's
    module = torch.nn.Linear(4, 3)
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=0.1))
    remainder = fabric.load(ckpt, {"model": model, "optimizer": optimizer})
    state = optimizer.state_dict()["state"]
    result = {
        "remainder": remainder,
        "weight": model.weight.detach().tolist(),
        "bias": model.bias.detach().tolist(),
        "exp_avg": state[0]["exp_avg"].tolist(),
        "adam_step": float(state[0]["step"]),
    }
    # training continues from the loaded state on both ranks alike
    fabric.backward(model(torch.ones(2, 4)).sum())
    optimizer.step()
    result["after_step"] = model.weight.detach().tolist()
    (out / f"rank{fabric.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
