"""Checks that need a CUDA GPU: placement, fp16 mixed precision with scaling, bf16, nccl.

They skip on machines without one (the conftest marks them). On a GPU machine run them with
``python -m pytest tests/cuda tests/precision -m cuda -q``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric
from fabric.environments import find_free_network_port
from tests.helpers import regression_data, tiny_mlp

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).parent.parent.parent


def test_placement_of_model_batches_and_init() -> None:
    fabric = Fabric(accelerator="cuda", devices=1)
    assert fabric.device.type == "cuda"
    module = tiny_mlp()
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    assert all(p.device.type == "cuda" for p in model.parameters())
    x, y = regression_data()
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=16))
    for xb, yb in loader:
        assert xb.device.type == "cuda" and yb.device.type == "cuda"
        fabric.backward(F.mse_loss(model(xb), yb))
        optimizer.step()
        optimizer.zero_grad()
    with fabric.init_module():
        layer = torch.nn.Linear(2, 2)
    with fabric.init_tensor():
        t = torch.zeros(2)
    assert layer.weight.device.type == "cuda" and t.device.type == "cuda"


def test_fp16_mixed_scales_and_recovers_from_overflow() -> None:
    fabric = Fabric(accelerator="cuda", devices=1, precision="16-mixed")
    module = tiny_mlp()
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.05))
    scaler = fabric.strategy.precision.scaler
    x, y = fabric.to_device(regression_data())
    fabric.backward(model(x).sum() * float("inf"))
    optimizer.step()  # skipped, scale halves
    optimizer.zero_grad()
    assert scaler.get_scale() < 2.0**16
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(x), y)
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=10.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_true_and_mixed() -> None:
    for precision, dtype in (("bf16-true", torch.bfloat16), ("bf16-mixed", torch.float32)):
        fabric = Fabric(accelerator="cuda", devices=1, precision=precision)
        module = tiny_mlp()
        model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=1e-2))
        assert next(model.parameters()).dtype == dtype
        x, y = fabric.to_device(regression_data())
        first = last = None
        for _ in range(30):
            loss = F.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            first = first if first is not None else loss.item()
            last = loss.item()
        assert last is not None and first is not None and last < first


def test_nccl_process_group_and_collectives(tmp_path: Path) -> None:
    script = tmp_path / "nccl.py"
    script.write_text(
        "import json, sys, torch\n"
        "from fabric import Fabric\n"
        "fabric = Fabric(accelerator='cuda', strategy='ddp', devices=1)\n"
        "fabric.launch()\n"
        "module = torch.nn.Linear(4, 1)\n"
        "model, opt = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))\n"
        "fabric.backward(model(torch.randn(8, 4, device=fabric.device)).sum()); opt.step()\n"
        "total = fabric.all_reduce(torch.ones(2, device=fabric.device), reduce_op='sum')\n"
        "import torch.distributed as dist\n"
        "json.dump({'backend': dist.get_backend(), 'total': total.tolist(), 'device': str(fabric.device)},"
        " open(sys.argv[1], 'w'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_PORT": str(find_free_network_port())}
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True, timeout=120)
    report = json.loads(out.read_text())
    assert report["backend"] == "nccl"
    assert report["total"] == [1.0, 1.0]
    assert report["device"].startswith("cuda")
