"""A ``ModelParallelStrategy`` run (tensor parallel, optionally with FSDP2 across the data-parallel dim).

Started by ``tests/strategies/test_model_parallel.py`` as ``python model_parallel_checks.py OUT_DIR DP TP``
(fabric re-runs it for the other ranks). Checks forward, backward and a step against the unsharded
model, meta-device init, the mesh and the data split; writes a sharded checkpoint that the test
loads on one process. Every rank writes ``OUT_DIR/rank{N}.json``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from common import FeedForward, NoReset, attempt, full, full_parameters, max_diff, report, run_sections
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric
from fabric.strategies import ModelParallelStrategy


def parallelize(model: nn.Module, mesh: Any) -> nn.Module:
    plan = {"w1": ColwiseParallel(), "w2": RowwiseParallel()} if isinstance(model, FeedForward) else {}
    if plan:
        parallelize_module(model, mesh["tensor_parallel"], plan)
    if mesh["data_parallel"].size() > 1:
        fully_shard(model, mesh=mesh["data_parallel"])
    return model


def seeded(seed: int) -> FeedForward:
    torch.manual_seed(seed)
    return FeedForward()


def inputs(seed: int = 4, n: int = 8) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def equivalence(fabric: Fabric, dp_rank: int, dp_size: int) -> dict[str, Any]:
    """Each data-parallel group takes its part of the batch; the result must be the unsharded model's."""
    reference = seeded(0)
    model = seeded(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    x = inputs()
    mine = x.chunk(dp_size)[dp_rank]

    output = model(mine)
    fabric.backward(output.pow(2).mean())
    grads = {n: full(p.grad) for n, p in model.module.named_parameters()}
    optimizer.step()

    reference_output = reference(mine)
    reference(x).pow(2).mean().backward()
    expected_grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    placements = {n: [str(pl) for pl in p.placements] for n, p in model.module.named_parameters()}
    return {
        "output_type": type(output).__name__,
        "output_diff": float((output - reference_output).detach().abs().max()),
        "grad_diff": max_diff(grads, expected_grads),
        "param_diff_after_step": max_diff(full_parameters(model), full_parameters(reference)),
        "placements": placements,
        "local_shapes": {n: list(p.to_local().shape) for n, p in model.module.named_parameters()},
    }


def meta_init(fabric: Fabric) -> dict[str, Any]:
    torch.manual_seed(7)  # the values are those of this construction, as without empty_init
    with fabric.init_module(empty_init=True):
        model = FeedForward()
    on_meta = all(p.is_meta for p in model.parameters())
    torch.rand(2)  # draws between construction and setup do not change the model's values
    model = fabric.setup(model)
    values, expected = full_parameters(model), full_parameters(seeded(7))
    with torch.device("meta"):  # made on meta outside `init_module`: nothing recorded its construction
        bad = NoReset()
    return {
        "created_on_meta": on_meta,
        "all_equal": values.keys() == expected.keys()
        and all(torch.equal(values[k], expected[k]) for k in values),
        "max_diff": max_diff(values, expected),
        "no_reset_parameters": attempt(lambda: fabric.setup(bad)),
    }


def mesh_and_data(fabric: Fabric) -> dict[str, Any]:
    mesh = fabric.strategy.device_mesh  # type: ignore[attr-defined]
    dataset = TensorDataset(torch.arange(8.0))
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=2))
    return {
        "mesh_dim_names": list(mesh.mesh_dim_names),
        "mesh_shape": list(mesh.shape),
        "sampler_kwargs": fabric.strategy.distributed_sampler_kwargs,
        "samples": [batch[0].tolist() for batch in loader],
    }


def checkpoint(fabric: Fabric, out_dir: str) -> dict[str, Any]:
    """Write a sharded checkpoint of a trained tensor-parallel model and Adam; rank 0 keeps the truth."""
    model = seeded(11)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    for step in range(3):
        fabric.backward(model(inputs(seed=step)).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
    fabric.save(os.path.join(out_dir, "tp_checkpoint"), {"model": model, "optimizer": optimizer, "step": 3})
    names = {id(p): n for n, p in model.module.named_parameters()}
    reference = {
        "model": full_parameters(model),
        "exp_avg": {names[id(p)]: full(s["exp_avg"]) for p, s in optimizer.state.items()},
        "step": {names[id(p)]: float(s["step"]) for p, s in optimizer.state.items()},
    }
    if fabric.global_rank == 0:
        torch.save(reference, os.path.join(out_dir, "tp_reference.pt"))
    return {"saved": True}


def main(out_dir: str, dp: int, tp: int) -> None:
    strategy = ModelParallelStrategy(parallelize, data_parallel_size=dp, tensor_parallel_size=tp)
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=dp * tp)
    fabric.launch()
    dp_rank = fabric.global_rank // tp
    results = run_sections(
        {
            "equivalence": lambda: equivalence(fabric, dp_rank, dp),
            "meta_init": lambda: meta_init(fabric),
            "mesh_and_data": lambda: mesh_and_data(fabric),
            "checkpoint": lambda: checkpoint(fabric, out_dir),
        }
    )
    results["world_size"] = fabric.world_size
    report(out_dir, fabric.global_rank, results)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
