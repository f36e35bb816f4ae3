"""A ``torch.compile``d model under DDP on two processes: compiled after wrapping, plain checkpoint keys.

``python compile_ddp.py OUT_DIR``; each rank writes ``rank{N}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from fabric import Fabric


def main(out_dir: str) -> None:
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    fabric.launch()
    torch.manual_seed(1 + fabric.global_rank)  # different starts: DDP's broadcast makes them equal
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    compiled = torch.compile(model, backend="eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped, optimizer = fabric.setup(compiled, optimizer)
    forward = wrapped._forward_module
    inner = getattr(forward, "_orig_mod", None)
    generator = torch.Generator().manual_seed(10 + fabric.global_rank)
    for step in range(3):
        x = torch.randn(5, 4, generator=generator)
        with fabric.no_backward_sync(wrapped, enabled=step == 0):
            fabric.backward(wrapped(x).pow(2).mean())
        if step > 0:
            optimizer.step()
            optimizer.zero_grad()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = fabric.all_gather(flat)
    path = Path(out_dir, "ckpt.pt")
    fabric.save(path, {"model": wrapped})
    fabric.barrier()
    saved = torch.load(path, weights_only=True)
    result = {
        "forward_is_compiled": type(forward).__name__ == "OptimizedModule",
        "compiled_wraps_ddp": type(inner).__name__ == "DistributedDataParallel",
        "same_dynamo_context": forward.dynamo_ctx is compiled.dynamo_ctx,
        "ranks_identical": bool(torch.equal(gathered[0], gathered[1])),
        "state_dict_keys": sorted(wrapped.state_dict()),
        "checkpoint_keys": sorted(saved["model"]),
    }
    Path(out_dir, f"rank{fabric.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
