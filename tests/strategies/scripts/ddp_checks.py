"""One 2-process ``Fabric(strategy="ddp")`` run that checks many things and writes what it saw.

Started by ``tests/strategies/test_ddp.py`` as ``python ddp_checks.py OUT_DIR``; the subprocess
launcher re-runs it for rank 1. Every rank writes ``OUT_DIR/rank{N}.json``; the test asserts on the
files. Checks never raise here (an exception on one rank only would leave the other waiting in a
collective): they record what they found, and every rank issues the same collectives in the same
order.

Sections: identity/rendezvous, training agreement, parity with raw DistributedDataParallel,
no_backward_sync, collectives, hypothesis examples for all_reduce and all_gather.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fabric import Fabric

WORLD_SIZE = 2


def tiny_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))


def batch(seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 8, generator=generator)
    return x, torch.stack([x.sum(1), x[:, 0] - x[:, 1]], dim=1)


def flat_parameters(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def flat_gradients(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().reshape(-1) for p in module.parameters()])


def identity(fabric: Fabric) -> dict[str, Any]:
    return {
        "global_rank": fabric.global_rank,
        "local_rank": fabric.local_rank,
        "node_rank": fabric.node_rank,
        "world_size": fabric.world_size,
        "pid": os.getpid(),
        "argv": sys.argv[1:],
        "main_address": fabric.strategy.environment.main_address,
        "env_master_addr": os.environ.get("MASTER_ADDR"),
        "env_master_port": os.environ.get("MASTER_PORT"),
        "backend": torch.distributed.get_backend(),
    }


def training(fabric: Fabric) -> dict[str, Any]:
    """Different initial weights and different data per rank; DDP must keep the ranks identical."""
    model = tiny_mlp(seed=100 + fabric.global_rank)
    before = flat_parameters(model).clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    for step in range(5):
        x, y = batch(seed=1000 * fabric.global_rank + step, size=8)
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    after = flat_parameters(model)
    gathered = fabric.all_gather(after)
    return {
        "ranks_identical": bool(torch.equal(gathered[0], gathered[1])),
        "changed": not torch.equal(before, after),
        "finite": bool(torch.isfinite(after).all()),
    }


def extra_parameter(fabric: Fabric) -> dict[str, Any]:
    """Issue 19 #4: an optimizer that also updates a learnable temperature outside the model.

    Each rank starts the temperature from a different value and sees its half of the batch; it must end
    equal on both ranks and equal (to float rounding) to one process training on the whole batch,
    with accumulation inside `no_backward_sync` too.
    """
    rank = fabric.global_rank
    x, y = batch(seed=11, size=16)
    mine = slice(8 * rank, 8 * rank + 8)

    def loss_of(
        model: nn.Module, temperature: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
    ) -> torch.Tensor:
        return nn.functional.mse_loss(model(xs) / temperature, ys)

    reference = tiny_mlp(seed=5)
    ref_temperature = nn.Parameter(torch.tensor(1.5))
    ref_optimizer = torch.optim.SGD([*reference.parameters(), ref_temperature], lr=0.05, momentum=0.9)
    for _ in range(3):
        loss_of(reference, ref_temperature, x, y).backward()
        ref_optimizer.step()
        ref_optimizer.zero_grad()

    module = tiny_mlp(seed=5)
    temperature = nn.Parameter(torch.tensor(1.5 if rank == 0 else 9.0))  # rank 0's value must win
    optimizer = torch.optim.SGD([*module.parameters(), temperature], lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(module, optimizer)
    for step in range(3):
        if step == 1:  # two micro-batches of a quarter each, the first without gradient sync
            with fabric.no_backward_sync(model):
                fabric.backward(loss_of(model, temperature, x[mine][:4], y[mine][:4]) / 2)
            fabric.backward(loss_of(model, temperature, x[mine][4:], y[mine][4:]) / 2)
        else:
            fabric.backward(loss_of(model, temperature, x[mine], y[mine]))
        optimizer.step()
        optimizer.zero_grad()
    both = fabric.all_gather(temperature.detach().reshape(1))
    return {
        "temperatures": both.flatten().tolist(),
        "reference_temperature": float(ref_temperature),
        "changed": float(temperature) != 1.5,
        "model_close": bool(torch.allclose(flat_parameters(module), flat_parameters(reference), atol=1e-6)),
        "temperature_close": bool(torch.allclose(temperature.detach(), ref_temperature.detach(), atol=1e-6)),
    }


def parity_with_raw_ddp(fabric: Fabric) -> dict[str, Any]:
    """Fabric's DDP and a hand-written DDP loop with a DistributedSampler must give the same bits."""
    x, y = batch(seed=7, size=64)
    dataset = TensorDataset(x, y)
    initial = tiny_mlp(seed=3)

    fabric_model = copy.deepcopy(initial)
    fabric_optimizer = torch.optim.Adam(fabric_model.parameters(), lr=0.01)
    fabric_model, fabric_optimizer = fabric.setup(fabric_model, fabric_optimizer)
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=4, shuffle=True))
    fabric_steps = 0
    for inputs, targets in loader:
        loss = nn.functional.mse_loss(fabric_model(inputs), targets)
        fabric.backward(loss)
        fabric_optimizer.step()
        fabric_optimizer.zero_grad()
        fabric_steps += 1

    raw_model = DistributedDataParallel(copy.deepcopy(initial))
    raw_optimizer = torch.optim.Adam(raw_model.parameters(), lr=0.01)
    sampler = DistributedSampler(
        dataset, num_replicas=WORLD_SIZE, rank=torch.distributed.get_rank(), shuffle=True, seed=0
    )
    raw_steps = 0
    for inputs, targets in DataLoader(dataset, batch_size=4, sampler=sampler):
        loss = nn.functional.mse_loss(raw_model(inputs), targets)
        loss.backward()
        raw_optimizer.step()
        raw_optimizer.zero_grad()
        raw_steps += 1

    ours, theirs = flat_parameters(fabric_model), flat_parameters(raw_model.module)
    return {
        "fabric_steps": fabric_steps,
        "raw_steps": raw_steps,
        "bit_identical": bool(torch.equal(ours, theirs)),
        "max_abs_diff": float((ours - theirs).abs().max()),
        "changed": not torch.equal(ours, flat_parameters(initial)),
    }


def accumulation(fabric: Fabric, micro_batches: int = 4, size: int = 4) -> dict[str, Any]:
    """``no_backward_sync`` over k micro-batches equals one step on the whole global batch."""
    initial = tiny_mlp(seed=5)
    reference = copy.deepcopy(initial)
    model = copy.deepcopy(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)

    unsynced_differ = []
    for i in range(micro_batches):
        last = i == micro_batches - 1
        x, y = batch(seed=500 + 10 * fabric.global_rank + i, size=size)
        with fabric.no_backward_sync(model, enabled=not last):
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss / micro_batches)
        if not last:
            grads = fabric.all_gather(flat_gradients(model))
            unsynced_differ.append(not torch.equal(grads[0], grads[1]))
    synced = fabric.all_gather(flat_gradients(model))
    accumulated_grad = flat_gradients(model).clone()
    optimizer.step()

    # The reference sees every micro-batch of every rank at once, in one process, without DDP.
    pieces = [
        batch(seed=500 + 10 * r + i, size=size) for r in range(WORLD_SIZE) for i in range(micro_batches)
    ]
    big_x = torch.cat([p[0] for p in pieces])
    big_y = torch.cat([p[1] for p in pieces])
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    nn.functional.mse_loss(reference(big_x), big_y).backward()
    reference_grad = flat_gradients(reference).clone()
    reference_optimizer.step()

    ours, theirs = flat_parameters(model), flat_parameters(reference)
    return {
        "unsynced_grads_differ": unsynced_differ,
        "synced_grads_identical": bool(torch.equal(synced[0], synced[1])),
        "grad_allclose": bool(torch.allclose(accumulated_grad, reference_grad, rtol=1e-5, atol=1e-6)),
        "grad_max_abs_diff": float((accumulated_grad - reference_grad).abs().max()),
        "params_allclose": bool(torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)),
        "params_max_abs_diff": float((ours - theirs).abs().max()),
    }


def collectives(fabric: Fabric) -> dict[str, Any]:
    rank = fabric.global_rank
    out: dict[str, Any] = {}
    base = torch.tensor([1.0, -2.0, 3.0])
    mine = base * (rank + 1)
    for op in ("sum", "mean", "max", "min"):
        out[f"all_reduce_{op}"] = fabric.all_reduce(mine, reduce_op=op).tolist()
    out["all_reduce_input_untouched"] = torch.equal(mine, base * (rank + 1))
    # Lightning's forms: a process group, a torch.distributed.ReduceOp, a differentiable gather
    world = torch.distributed.group.WORLD
    out["group_sum"] = fabric.all_reduce(mine, group=world, reduce_op=torch.distributed.ReduceOp.SUM).tolist()
    out["product"] = fabric.all_reduce(mine, reduce_op=torch.distributed.ReduceOp.PRODUCT).tolist()
    out["group_gather"] = fabric.all_gather(torch.tensor([rank]), group=world).tolist()
    leaf = torch.tensor([rank + 1.0], requires_grad=True)
    fabric.all_gather(leaf * 3, sync_grads=True).sum().backward()
    out["sync_grads"] = leaf.grad.tolist()
    out["number_gather"] = fabric.all_gather(0.5 + rank).tolist()
    out["all_reduce_int_mean"] = fabric.all_reduce(torch.tensor([rank + 1, 4]), reduce_op="mean").tolist()
    # Issue 19 #10: an integer mean is Lightning's, computed here by Lightning itself on the same group
    # (negative quotients included: both truncate toward zero).
    ints = torch.tensor([rank + 1, 4, -3 * rank - 1, 7, 2 * rank])
    ours = fabric.all_reduce(ints, reduce_op="mean")
    out["int_mean"] = {"ours": ours.tolist(), "dtype": str(ours.dtype)}
    try:
        from lightning.fabric.utilities.distributed import _sync_ddp
    except ImportError:  # lightning is a test dependency; without it the test says so
        out["int_mean"]["lightning"] = None
    else:
        theirs = _sync_ddp(ints.clone(), reduce_op="mean")
        out["int_mean"]["lightning"] = theirs.tolist()
        out["int_mean"]["lightning_dtype"] = str(theirs.dtype)
    # gloo has no int16 kernels: the strategy must carry them in a wider dtype and give int16 back.
    small = torch.tensor([rank + 1, -300], dtype=torch.int16)
    summed, gathered = fabric.all_reduce(small, reduce_op="sum"), fabric.all_gather(small)
    out["int16"] = {
        "sum": summed.tolist(),
        "gather": gathered.tolist(),
        "dtypes": [str(summed.dtype), str(gathered.dtype)],
    }

    nested = {
        "loss": torch.tensor(float(rank)),
        "list": [torch.tensor([rank, 10 * rank]), (torch.full((2, 2), float(rank + 1)), "text")],
        "number": 7,
    }
    reduced = fabric.all_reduce(nested, reduce_op="sum")
    out["nested_sum"] = {
        "loss": reduced["loss"].item(),
        "list0": reduced["list"][0].tolist(),
        "list1_0": reduced["list"][1][0].tolist(),
        "list1_1": reduced["list"][1][1],
        # numbers are turned into tensors and reduced too, as in Lightning
        "number": reduced["number"].item(),
    }
    out["nested_max"] = fabric.all_reduce({"a": [torch.tensor([rank, -rank])]}, reduce_op="max")["a"][
        0
    ].tolist()

    same = fabric.all_gather(torch.arange(3) + 10 * rank)
    out["all_gather_same"] = {"type": type(same).__name__, "value": same.tolist()}
    ragged = fabric.all_gather(torch.full((rank + 1, 2), float(rank)))
    out["all_gather_ragged"] = {
        "type": type(ragged).__name__,
        "value": [t.tolist() for t in ragged] if isinstance(ragged, list) else ragged.tolist(),
    }
    gathered_nested = fabric.all_gather({"a": torch.tensor(rank), "b": [torch.ones(rank + 2)]})
    out["all_gather_nested"] = {
        "a": gathered_nested["a"].tolist(),
        "b": [t.tolist() for t in gathered_nested["b"][0]],
    }

    tensor = torch.arange(5.0) if rank == 0 else torch.zeros(5)
    out["broadcast_tensor"] = fabric.broadcast(tensor).tolist()
    obj = {"nested": [1, "x", (2.5, None)], "set": {1, 2}, "rank": rank} if rank == 0 else None
    received = fabric.broadcast(obj)
    out["broadcast_object"] = {
        "nested": received["nested"],
        "set": sorted(received["set"]),
        "rank": received["rank"],
    }
    out["broadcast_from_1"] = fabric.broadcast(f"from rank {rank}", src=1)

    # barrier: rank 1 arrives late; rank 0 must not leave before rank 1 arrived (one clock: same machine).
    if rank == 1:
        time.sleep(0.5)
    arrived = time.time()
    fabric.barrier()
    left = time.time()
    out["barrier"] = fabric.all_gather(torch.tensor([arrived, left], dtype=torch.float64)).tolist()

    # rank_zero_first: rank 0's block must finish before rank 1's starts (one clock: same machine).
    with fabric.rank_zero_first(local=False):
        entered = time.time()
        if rank == 0:
            time.sleep(1.0)
        left = time.time()
    times = fabric.all_gather(torch.tensor([entered, left], dtype=torch.float64))
    out["rank_zero_first"] = times.tolist()
    out["reduce_boolean_all"] = fabric.strategy.reduce_boolean_decision(rank == 0, all=True)
    out["reduce_boolean_any"] = fabric.strategy.reduce_boolean_decision(rank == 0, all=False)
    return out


def property_examples(fabric: Fabric) -> dict[str, Any]:
    """Hypothesis examples, drawn identically on both ranks (derandomized, generate phase only).

    Nothing here raises: a failure on one rank would make hypothesis shrink on that rank alone and
    issue different collectives than the other. Failures are recorded and asserted by the test.
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    rank = fabric.global_rank
    config = settings(
        derandomize=True,
        max_examples=30,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    reduce_dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    reduce_dtypes += [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]
    gather_dtypes = [*reduce_dtypes, torch.bool, torch.complex64]
    shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)

    def values(shape: tuple[int, ...], dtype: torch.dtype, of_rank: int) -> torch.Tensor:
        # Small integers: exact in every dtype (bf16 included), no overflow when summed over two ranks.
        numel = 1
        for n in shape:
            numel *= n
        raw = (torch.arange(numel, dtype=torch.int64) * 7 + 3 * of_rank) % 50
        if dtype == torch.bool:
            raw = raw % 2
        return raw.reshape(shape).to(dtype)

    seen: dict[str, list[str]] = {"all_reduce": [], "all_gather": []}
    failures: list[str] = []

    @config
    @given(
        shape=shapes, dtype=st.sampled_from(reduce_dtypes), op=st.sampled_from(["sum", "mean", "max", "min"])
    )
    def check_all_reduce(shape: tuple[int, ...], dtype: torch.dtype, op: str) -> None:
        seen["all_reduce"].append(f"{shape}/{dtype}/{op}")
        mine = values(shape, dtype, rank)
        per_rank = [values(shape, dtype, r) for r in range(WORLD_SIZE)]
        try:
            result = fabric.all_reduce(mine, reduce_op=op)
        except Exception as err:
            failures.append(f"all_reduce {shape} {dtype} {op}: {type(err).__name__}: {err}")
            return
        stacked = torch.stack([t.to(torch.float64) for t in per_rank])
        expected = {
            "sum": stacked.sum(0),
            "mean": stacked.mean(0),
            "max": stacked.max(0).values if stacked.numel() else stacked.sum(0),
            "min": stacked.min(0).values if stacked.numel() else stacked.sum(0),
        }[op]
        expected_dtype = dtype
        if op == "mean" and not dtype.is_floating_point:
            expected = torch.trunc(expected)  # Lightning's integer mean: the quotient in the integer dtype
        if result.shape != mine.shape or result.dtype != expected_dtype:
            failures.append(f"all_reduce {shape} {dtype} {op}: got {result.dtype}{tuple(result.shape)}")
        elif not torch.equal(result.to(torch.float64), expected):
            failures.append(f"all_reduce {shape} {dtype} {op}: {result.tolist()} != {expected.tolist()}")

    @config
    @given(shape=shapes, dtype=st.sampled_from(gather_dtypes), ragged=st.booleans())
    def check_all_gather(shape: tuple[int, ...], dtype: torch.dtype, ragged: bool) -> None:
        seen["all_gather"].append(f"{shape}/{dtype}/{ragged}")

        def shape_of(r: int) -> tuple[int, ...]:
            if ragged and shape:
                return (shape[0] + r, *shape[1:])
            return shape

        per_rank = [values(shape_of(r), dtype, r) for r in range(WORLD_SIZE)]
        try:
            result = fabric.all_gather(per_rank[rank])
        except Exception as err:
            failures.append(f"all_gather {shape} {dtype} ragged={ragged}: {type(err).__name__}: {err}")
            return
        if all(t.shape == per_rank[0].shape for t in per_rank):
            ok = isinstance(result, torch.Tensor) and torch.equal(result, torch.stack(per_rank))
        else:
            ok = isinstance(result, list) and all(
                a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(result, per_rank, strict=True)
            )
        if not ok:
            failures.append(f"all_gather {shape} {dtype} ragged={ragged}: got {result!r}")

    check_all_reduce()
    check_all_gather()
    return {"seen": seen, "failures": failures}


def main() -> None:
    out_dir = Path(sys.argv[1])
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=WORLD_SIZE)
    fabric.launch()
    results: dict[str, Any] = {"identity": identity(fabric)}
    for name, check in [
        ("training", training),
        ("parity", parity_with_raw_ddp),
        ("accumulation", accumulation),
        ("collectives", collectives),
        ("extra_parameter", extra_parameter),
        ("properties", property_examples),
    ]:
        start = time.monotonic()
        results[name] = check(fabric)
        results[name]["seconds"] = round(time.monotonic() - start, 3)
    (out_dir / f"rank{fabric.global_rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
