"""What FSDP (one process) refuses, through `Fabric` itself; one RESULT line per case.

1. An Adam state saved in the sharded layout, loaded into SGD (issue 19 #11).
2. An optimizer that also updates a parameter outside the model (issue 19 #4).
"""

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

    third = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    temperature = torch.nn.Parameter(torch.tensor(2.0))
    try:
        fabric.setup(third, torch.optim.SGD([*third.parameters(), temperature], lr=0.1))
        print("RESULT set up", flush=True)
    except Exception as error:
        print(f"RESULT {type(error).__name__}: {error}", flush=True)


if __name__ == "__main__":
    main()
