"""FSDP (one process) must not keep the models it sharded alive; prints OK when they are released."""

from __future__ import annotations

import gc
import weakref

import torch

from fabric import Fabric


def main() -> None:
    fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=1)
    fabric.launch()
    refs = []
    for _ in range(2):
        module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
        refs.append(weakref.ref(module))
        del module, model, optimizer
    gc.collect()
    alive = [r for r in refs if r() is not None]
    print("OK" if not alive else f"ALIVE {len(alive)}")


if __name__ == "__main__":
    main()
