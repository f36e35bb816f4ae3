"""An Adam state saved by FSDP (sharded layout), loaded into SGD: one RESULT line with what happened."""

from __future__ import annotations

import sys

import torch

from fabric import Fabric


def main() -> None:
    fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=1)
    fabric.launch()
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters()))
    fabric.backward(model(torch.ones(1, 4)).sum())
    optimizer.step()
    fabric.save(sys.argv[1], {"model": model, "optimizer": optimizer})
    other = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    other_model, other_optimizer = fabric.setup(
        other, torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    )
    try:
        fabric.load(sys.argv[1], {"model": other_model, "optimizer": other_optimizer})
        print("RESULT loaded", flush=True)
    except Exception as error:
        print(f"RESULT {type(error).__name__}: {error}", flush=True)


if __name__ == "__main__":
    main()
