"""One 2-process FSDP run that checks training, memory, precision, accumulation and meta-device init.

Started by ``tests/strategies/test_fsdp.py`` as ``python fsdp_checks.py OUT_DIR``; fabric re-runs it
for rank 1. After the first ``Fabric`` has launched, this process knows its rank (``LOCAL_RANK``), so
further ``Fabric`` objects (DDP as the reference, other precisions) join the same process group
without starting processes. Every rank writes ``OUT_DIR/rank{N}.json``.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from common import Block, Net, NoReset, attempt, data, full, full_parameters, max_diff, report, run_sections
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric
from fabric.strategies import FSDPStrategy

STEPS_DATA = 64  # samples: 8 steps of 4 per rank on 2 ranks
MAX_NORM = 0.2


def train(fabric: Fabric, steps_data: int = STEPS_DATA) -> tuple[Any, list[float], list[float]]:
    """Seeded model, SGD created *before* setup, a split dataloader, clipping by norm every step."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    x, y = data(seed=1, n=steps_data)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=4))
    norms, losses = [], []
    for inputs, targets in loader:
        loss = nn.functional.mse_loss(model(inputs), targets)
        fabric.backward(loss)
        norm = fabric.clip_gradients(model, optimizer, max_norm=MAX_NORM)
        norms.append(float(norm))
        losses.append(float(loss.detach()))
        optimizer.step()
        optimizer.zero_grad()
    return model, norms, losses


def parity(fsdp: Fabric, ddp: Fabric, fsdp_options: Fabric) -> dict[str, Any]:
    fsdp_model, fsdp_norms, _ = train(fsdp)
    ddp_model, ddp_norms, _ = train(ddp)
    options_model, options_norms, _ = train(fsdp_options)
    reference = full_parameters(ddp_model)
    params = list(fsdp_model.parameters())
    local_bytes = sum(p.to_local().numel() * p.element_size() for p in params)
    full_bytes = sum(p.numel() * p.element_size() for p in params)
    per_rank = fsdp.all_gather(torch.tensor(local_bytes))
    return {
        "steps": len(fsdp_norms),
        "all_dtensor": all(type(p).__name__ == "DTensor" for p in params),
        "max_param_diff": max_diff(full_parameters(fsdp_model), reference),
        "changed": max_diff(reference, full_parameters(_seeded(Net))) > 0,
        "fsdp_norms": fsdp_norms,
        "ddp_norms": ddp_norms,
        "local_bytes": local_bytes,
        "full_bytes": full_bytes,
        "bytes_per_rank": per_rank.tolist(),
        "options_max_param_diff": max_diff(full_parameters(options_model), reference),
        "options_norms": options_norms,
        "options_unit_count": sum(1 for m in options_model.modules() if type(m).__name__.startswith("FSDP")),
        "options_checkpointed": sum(1 for m in options_model.modules() if "Checkpoint" in type(m).__name__),
    }


def _seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def accumulation(fabric: Fabric, micro_batches: int = 4, size: int = 4) -> dict[str, Any]:
    """k micro-batches under ``no_backward_sync`` give the gradients of one batch of k times the size."""
    initial = _seeded(Net, seed=5)
    model, big = copy.deepcopy(initial), copy.deepcopy(initial)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    big, big_optimizer = fabric.setup(big, torch.optim.SGD(big.parameters(), lr=0.1))
    x, y = data(seed=50 + fabric.global_rank, n=micro_batches * size)

    grad_none_while_unsynced = []
    for i in range(micro_batches):
        last = i == micro_batches - 1
        part = slice(i * size, (i + 1) * size)
        with fabric.no_backward_sync(model, enabled=not last):
            loss = nn.functional.mse_loss(model(x[part]), y[part])
            fabric.backward(loss / micro_batches)
        if not last:
            grad_none_while_unsynced.append(all(p.grad is None for p in model.parameters()))
    fabric.backward(nn.functional.mse_loss(big(x), y))
    grads = {n: full(p.grad) for n, p in model.named_parameters()}
    big_grads = {n: full(p.grad) for n, p in big.named_parameters()}
    optimizer.step()
    big_optimizer.step()
    return {
        "grad_none_while_unsynced": grad_none_while_unsynced,
        "grad_max_diff": max_diff(grads, big_grads),
        "grad_allclose": all(torch.allclose(grads[k], big_grads[k], rtol=1e-5, atol=1e-6) for k in grads),
        "param_max_diff": max_diff(full_parameters(model), full_parameters(big)),
    }


def precision_run(fabric: Fabric) -> dict[str, Any]:
    """Train on one batch; record parameter dtypes and the dtype the inner layers compute in."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    seen: dict[str, str] = {}
    inner = model.module.blocks[0].linear  # type: ignore[union-attr]
    inner.register_forward_hook(lambda m, i, o: seen.__setitem__("inner", str(o.dtype)))
    x, y = data(seed=3, n=16)
    losses = []
    for _ in range(15):
        output = model(x)
        loss = nn.functional.mse_loss(output.float(), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    params = list(model.parameters())
    return {
        "param_dtypes": sorted({str(p.dtype) for p in params}),
        "local_dtypes": sorted({str(p.to_local().dtype) for p in params}),
        "all_dtensor": all(type(p).__name__ == "DTensor" for p in params),
        "inner_output_dtype": seen.get("inner"),
        "output_dtype": str(output.dtype),
        "exp_avg_dtypes": sorted({str(s["exp_avg"].dtype) for s in optimizer.state.values()}),
        "losses": losses,
        "scaler": type(getattr(fabric.strategy.precision, "scaler", None)).__name__,
    }


class MetaNet(nn.Module):
    """Parameters and buffers (BatchNorm's running statistics), in several module kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.extra = nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(self.net(x))


def meta_init(fabric: Fabric) -> dict[str, Any]:
    torch.manual_seed(123)  # the values are those of this construction, as without empty_init
    with fabric.init_module(empty_init=True):
        model = MetaNet()
    created_on_meta = all(p.is_meta for p in model.parameters())
    torch.rand(3)  # draws between construction and setup do not change the model's values
    model = fabric.setup_module(model)
    reference = _seeded(MetaNet, seed=123)
    module = model.module
    values = {**full_parameters(module), **{n: b.clone() for n, b in module.named_buffers()}}
    expected = {**full_parameters(reference), **dict(reference.named_buffers())}
    x, _ = data(seed=9, n=6)
    model.eval()
    reference.eval()
    with torch.no_grad():
        output_diff = float((model(x) - reference(x)).abs().max())
    optimizer = fabric.setup_optimizers(torch.optim.Adam(model.parameters(), lr=1e-3))
    model.train()
    fabric.backward(model(x).sum())
    optimizer.step()

    with torch.device("meta"):  # made on meta outside `init_module`: nothing recorded its construction
        bad = NoReset()
    return {
        "created_on_meta": created_on_meta,
        "none_meta_after_setup": not any(t.is_meta for t in (*model.parameters(), *model.buffers())),
        "keys_equal": values.keys() == expected.keys(),
        "all_equal": values.keys() == expected.keys()
        and all(torch.equal(values[k], expected[k]) for k in values),
        "max_diff": max_diff(values, expected),
        "output_diff": output_diff,
        "stepped_finite": all(bool(torch.isfinite(full(p)).all()) for p in model.parameters()),
        "no_reset_parameters": attempt(lambda: fabric.setup_module(bad)),
    }


def optimizer_with_state(fabric: Fabric) -> dict[str, Any]:
    model = _seeded(Net)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 8)).sum().backward()
    optimizer.step()
    return attempt(lambda: fabric.setup(model, optimizer))


def main(out_dir: str) -> None:
    fsdp = Fabric(accelerator="cpu", strategy=FSDPStrategy(auto_wrap_policy={Block}), devices=2)
    fsdp.launch()
    ddp = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    ddp.launch()
    options = Fabric(
        accelerator="cpu",
        strategy=FSDPStrategy(
            auto_wrap_policy=lambda m: isinstance(m, (Block, nn.Linear)),
            activation_checkpointing_policy={Block},
            reshard_after_forward=False,
            cpu_offload=True,
        ),
        devices=2,
    )
    options.launch()

    def with_precision(precision: str) -> Fabric:
        fabric = Fabric(
            accelerator="cpu", strategy=FSDPStrategy(auto_wrap_policy={Block}), devices=2, precision=precision
        )
        fabric.launch()
        return fabric

    results = run_sections(
        {
            "parity": lambda: parity(fsdp, ddp, options),
            "accumulation": lambda: accumulation(fsdp),
            "bf16_mixed": lambda: precision_run(with_precision("bf16-mixed")),
            "bf16_true": lambda: precision_run(with_precision("bf16-true")),
            "fp16_mixed": lambda: precision_run(with_precision("16-mixed")),
            "meta_init": lambda: meta_init(fsdp),
            "optimizer_with_state": lambda: optimizer_with_state(fsdp),
        }
    )
    results["world_size"] = fsdp.world_size
    report(out_dir, fsdp.global_rank, results)


if __name__ == "__main__":
    main(sys.argv[1])
