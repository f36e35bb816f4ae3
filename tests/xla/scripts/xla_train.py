"""One training run for the XLA tests; prints a JSON line with what the tests compare.

Run as a subprocess because torch-xla reads ``PJRT_DEVICE`` and ``CPU_NUM_DEVICES`` once per process.
The same script runs on the plain CPU accelerator (the reference) and on every XLA strategy.

    python xla_train.py --accelerator xla --strategy xla --steps 4 [--save PATH] [--load PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric


def digest(module: nn.Module) -> str:
    """A hash of the exact bytes of every parameter and buffer (CPU copies)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accelerator", default="xla")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--save")
    parser.add_argument("--save-at", type=int, help="save after this many steps (default: at the end)")
    parser.add_argument("--load")
    parser.add_argument("--state-dict-type")
    args = parser.parse_args()

    devices: int | str = int(args.devices) if args.devices.lstrip("-").isdigit() else args.devices
    strategy: object = args.strategy
    if args.state_dict_type:
        from fabric.strategies.xla import XLAStrategy
        from fabric.strategies.xla_fsdp import XLAFSDPStrategy

        cls = XLAFSDPStrategy if args.strategy == "xla_fsdp" else XLAStrategy
        strategy = cls(state_dict_type=args.state_dict_type)
    fabric = Fabric(
        accelerator=args.accelerator, strategy=strategy, devices=devices, precision=args.precision
    )
    fabric.launch()
    fabric.seed_everything(7)

    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(args.dropout), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=generator)
    y = torch.stack([x[:, :4].sum(1), x[:, 4:].sum(1), x[:, 0] * x[:, 1], x[:, 2] - x[:, 3]], dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    loader = fabric.setup_dataloaders(loader)

    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    loaded_digest = None
    if args.load:
        fabric.load(args.load, state)
        loaded_digest = digest(model)

    losses = []
    saved_digest = None
    step = state["step"]
    iterator = iter(loader)
    while step < state["step"] + args.steps:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        inputs, targets = batch
        loss = nn.functional.mse_loss(model(inputs), targets)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(fabric.all_reduce(loss.detach(), reduce_op="mean").item())
        step += 1
        if args.save and step == (args.save_at or state["step"] + args.steps):
            # a run that saves midway and goes on is also the uninterrupted reference
            fabric.save(args.save, {**state, "step": step})
            saved_digest = digest(model)
    result = {
        "losses": losses,
        "digest": digest(model),
        "loaded_digest": loaded_digest,
        "saved_digest": saved_digest,
        "device_type": fabric.device.type,
        "strategy": type(fabric.strategy).__name__,
        "world_size": fabric.world_size,
        "global_rank": fabric.global_rank,
        "num_devices": getattr(fabric.strategy, "num_devices", 1),
        "param_dtype": str(next(model.parameters()).dtype),
        "torch_xla_imported": "torch_xla" in sys.modules,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
