"""The measured program of the sharded figures (``cases/sharded.py``), run under ``torchrun``.

    torchrun --nproc_per_node=2 cases/sharded_program.py steps fsdp OUT.json ROUNDS BLOCKS
    torchrun --nproc_per_node=2 cases/sharded_program.py memory fsdp-fabric OUT.json
    torchrun --nproc_per_node=N cases/sharded_program.py checkpoint MEGABYTES OUT.json ROUNDS DIR

Every mode writes one JSON object to OUT.json from rank 0. Raw PyTorch initialises the process group
(gloo); fabric's strategies find it initialised and reuse it, so all implementations of a ``steps`` or
``checkpoint`` run share the same two (or N) processes and are measured interleaved (see
``common.time_interleaved``). ``memory`` runs one implementation per launch, because a process's
peak resident memory (``ru_maxrss``) cannot be split between implementations.

``BENCH_DEVICE=cuda`` (set by ``benchmarks/gpu.py``) runs the same programs on one GPU per process with
nccl: tensors and meshes on the GPU, the timed sections closed by ``torch.cuda.synchronize``, and peak
memory read from the CUDA caching allocator instead of ``ru_maxrss``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

#: the transformer stack of figures 1 and 6: small enough for 2 CPU processes, several FSDP units
LAYERS, WIDTH, HEADS, SEQUENCE, BATCH = 4, 256, 4, 32, 4
#: the implementations of a step figure, by the keys the runner knows (harness.IMPL_KEYS)
STEP_IMPLS = ("raw", "raw-again", "fabric")
MEMORY_STEPS = 7
#: where the programs run: "cpu" (gloo, the CPU figures) or "cuda" (nccl, benchmarks/gpu.py)
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")


def _init() -> None:
    """The process group of the device (gloo on CPU, nccl on CUDA, one GPU per local rank), one thread."""
    if DEVICE == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo")
    torch.set_num_threads(1)


def _sync() -> None:
    """Close a timed section: the device's queued work done, then every rank at the same point."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    dist.barrier()


def _tensor_device() -> torch.device:
    return torch.device(DEVICE, torch.cuda.current_device()) if DEVICE == "cuda" else torch.device("cpu")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _write(path: str, payload: dict[str, Any]) -> None:
    if _rank() == 0:
        with open(path, "w") as file:
            json.dump(payload, file)


def transformer_stack(layers: int = LAYERS) -> nn.Sequential:
    """A stack of standard transformer blocks: each block is one FSDP unit in both implementations."""
    return nn.Sequential(
        *(
            nn.TransformerEncoderLayer(WIDTH, HEADS, dim_feedforward=4 * WIDTH, dropout=0.0, batch_first=True)
            for _ in range(layers)
        )
    )


class FeedForward(nn.Module):
    """A tensor-parallel MLP block: ``w1`` column-wise, ``w2`` row-wise (Megatron's split)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(WIDTH, 4 * WIDTH)
        self.w2 = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w2(torch.relu(self.w1(x)))


def feed_forward_stack(layers: int = LAYERS) -> nn.Sequential:
    return nn.Sequential(*(FeedForward() for _ in range(layers)))


def shard_blocks(model: nn.Module, mesh: Any) -> nn.Module:
    """Raw FSDP2: each block a unit, then the root (the same units fabric's default policy picks)."""
    from torch.distributed.fsdp import fully_shard

    for block in model.children():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def tensor_parallel(model: nn.Module, mesh: Any) -> nn.Module:
    """``parallelize_module`` on the tensor-parallel dimension, then FSDP2 on the data-parallel one."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    for block in model.children():
        parallelize_module(block, mesh["tensor_parallel"], {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    return shard_blocks(model, mesh["data_parallel"])


# ----------------------------------------------------------------------------------------- steps
def _raw_engine(figure: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if figure == "fsdp":
        model = shard_blocks(transformer_stack().to(_tensor_device()), init_device_mesh(DEVICE, (world,)))
    else:
        mesh = init_device_mesh(DEVICE, (1, world), mesh_dim_names=("data_parallel", "tensor_parallel"))
        model = tensor_parallel(feed_forward_stack().to(_tensor_device()), mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def _fabric(figure: str) -> Any:
    from fabric import Fabric
    from fabric.strategies import FSDPStrategy, ModelParallelStrategy

    world = dist.get_world_size()
    if figure == "fsdp":
        strategy: Any = FSDPStrategy(auto_wrap_policy={nn.TransformerEncoderLayer})
    else:
        strategy = ModelParallelStrategy(tensor_parallel, data_parallel_size=1, tensor_parallel_size=world)
    fabric = Fabric(accelerator=DEVICE, devices=world, strategy=strategy)
    fabric.launch()
    return fabric


def _prepare(impl: str, figure: str, fabric: Any) -> Callable[[torch.Tensor, torch.Tensor], None]:
    torch.manual_seed(0)
    if impl != "fabric":
        model, optimizer = _raw_engine(figure)

        def raw_step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return raw_step
    module = transformer_stack() if figure == "fsdp" else feed_forward_stack()
    wrapped, optimizer = fabric.setup(module, torch.optim.AdamW(module.parameters(), lr=1e-4))

    def fabric_step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.mse_loss(wrapped(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()

    return fabric_step


def steps(figure: str, out: str, rounds: int, blocks: int) -> None:
    """Interleaved blocks of every implementation in the same processes; fresh engines each round."""
    from cases.common import time_interleaved

    _init()
    fabric = _fabric(figure)
    generator = torch.Generator().manual_seed(1 + _rank())
    batches = [
        (
            torch.randn(BATCH, SEQUENCE, WIDTH, generator=generator).to(_tensor_device()),
            torch.randn(BATCH, SEQUENCE, WIDTH, generator=generator).to(_tensor_device()),
        )
        for _ in range(4)
    ]

    def cycle() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from batches

    results: dict[str, list[list[float]]] = {impl: [] for impl in STEP_IMPLS}
    block_steps = 0
    for round_index in range(rounds):
        order = STEP_IMPLS[round_index % 3 :] + STEP_IMPLS[: round_index % 3]
        contenders = {impl: (_prepare(impl, figure, fabric), cycle()) for impl in order}
        if not block_steps:  # about 0.2 s of the reference per block, the same for all rounds
            step, source = contenders["raw"]
            started = time.perf_counter()
            for _ in range(2):
                step(*next(source))
            _sync()
            per_step = torch.tensor((time.perf_counter() - started) / 2, device=_tensor_device())
            dist.broadcast(per_step, 0)
            block_steps = max(1, round(0.2 / float(per_step)))
        for step, source in contenders.values():  # warm-up, untimed
            for _ in range(2):
                step(*next(source))
        times = time_interleaved(contenders, block_steps, blocks, first=round_index, sync=_sync)
        for impl, measured in times.items():
            results[impl].append([measured.wall / measured.steps, measured.cpu / measured.steps])
        del contenders
    _write(out, {"times": results, "block_steps": block_steps})
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    if DEVICE == "cuda":  # the caching allocator's bytes in use; its peak is read at the end
        return torch.cuda.memory_allocated()
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory(impl: str, out: str) -> None:
    """Peak resident memory growth of one implementation over ``MEMORY_STEPS`` steps, from before the model exists.

    The model is created on the meta device for FSDP (raw: ``torch.device("meta")`` then
    ``to_empty`` + ``reset_parameters`` per block; fabric: ``init_module(empty_init=True)``), so that
    no rank ever holds it whole; DDP holds it whole on every rank by design.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    _init()
    strategy, implementation = impl.split("-")
    world = dist.get_world_size()
    fabric = None
    if implementation == "fabric":
        from fabric import Fabric

        fabric = Fabric(accelerator=DEVICE, devices=world, strategy=strategy)
        fabric.launch()
    x = torch.randn(BATCH, SEQUENCE, WIDTH)
    baseline = _rss_bytes()
    torch.manual_seed(0)
    if fabric is not None:
        with fabric.init_module(empty_init=strategy == "fsdp"):
            module = transformer_stack(LAYERS * 4)
        model, optimizer = fabric.setup(module, torch.optim.AdamW(module.parameters(), lr=1e-4))
        backward: Callable[[torch.Tensor], None] = fabric.backward
    else:
        if strategy == "fsdp":
            with torch.device("meta"):
                module = transformer_stack(LAYERS * 4)
            model = shard_blocks(module, init_device_mesh(DEVICE, (world,)))
            model.to_empty(device=_tensor_device())
            for submodule in model.modules():
                if hasattr(submodule, "reset_parameters") and submodule is not model:
                    submodule.reset_parameters()
        else:
            model = DistributedDataParallel(transformer_stack(LAYERS * 4).to(_tensor_device()))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def backward(loss: torch.Tensor) -> None:
            loss.backward()

    seconds = []
    for _ in range(MEMORY_STEPS):
        _sync()
        started = time.perf_counter()
        backward(model(x).square().mean())
        optimizer.step()
        optimizer.zero_grad()
        _sync()
        seconds.append(time.perf_counter() - started)
    if DEVICE == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    growth = torch.tensor([float(peak - baseline)], device=_tensor_device())
    dist.all_reduce(growth, op=dist.ReduceOp.MAX)
    # the steps after the first two: what the allocator setting costs per step, if anything
    _write(out, {"growth_bytes": float(growth), "step_seconds": sorted(seconds[2:])[len(seconds[2:]) // 2]})
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------ checkpoint
def checkpoint(megabytes: int, out: str, rounds: int, directory: str) -> None:
    """Sharded save and load of an FSDP2 model of ``megabytes`` of fp32 parameters: raw DCP against fabric.

    Raw: ``dcp.save(get_model_state_dict(model))`` and ``dcp.load`` + ``set_model_state_dict``. Fabric:
    ``fabric.save(dir, {"model": model})`` (its manifest and checksums included) and ``fabric.load``.
    Each operation is timed on rank 0 between two barriers, so a round's time is the slowest rank's.
    ``async`` is how long ``fabric.save(..., async_save=True)`` blocks the caller (the write then runs in
    the background and is waited for, untimed, before the next measurement).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    _init()
    world = dist.get_world_size()
    from fabric import Fabric
    from fabric.checkpoint import sharded as layout

    fabric = Fabric(accelerator=DEVICE, devices=world, strategy="fsdp")
    fabric.launch()
    width = 1024
    layers = max(1, round(megabytes * 2**20 / (4 * (width * width + width))))

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))

    raw_model = shard_blocks(make().to(_tensor_device()), init_device_mesh(DEVICE, (world,)))
    fabric_model = fabric.setup_module(make())
    state_bytes = layers * (width * width + width) * 4

    def timed(action: Callable[..., Any], *args: Any) -> float:
        _sync()
        started = time.perf_counter()
        action(*args)
        _sync()
        return time.perf_counter() - started

    def fresh(name: str) -> str:
        path = os.path.join(directory, name)
        if _rank() == 0:
            shutil.rmtree(path, ignore_errors=True)
        dist.barrier()
        return path

    def raw_save(path: str) -> None:
        dcp.save(get_model_state_dict(raw_model), checkpoint_id=path)

    def raw_load(path: str) -> None:
        state = get_model_state_dict(raw_model)
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(raw_model, state)

    def async_blocking(path: str) -> float:
        seconds = timed(partial(fabric.save, async_save=True), path, {"model": fabric_model})
        fabric.wait_for_checkpoint()
        return seconds

    def my_share(path: str) -> list[str]:  # each rank checks a share of the files, as fabric's pipeline does
        manifest = layout.read_manifest(path) or {}
        return sorted(manifest)[_rank() :: world]

    def checksums_only(path: str) -> None:
        # what fabric's save adds for its manifest: the CRC-32 of the bytes it writes, taken while they
        # are written (fabric/checkpoint/checksummed.py); here over this rank's shards in memory alone
        crc = 0
        for value in get_model_state_dict(fabric_model).values():
            local = value.to_local() if hasattr(value, "to_local") else value
            crc = zlib.crc32(local.detach().contiguous().view(torch.uint8).numpy().data, crc)

    def verify_only(path: str) -> None:
        layout.verify_files(path, layout.read_manifest(path) or {}, my_share(path))

    names = ("raw", "raw-again", "fabric", "fabric-async")
    results: dict[str, dict[str, list[float]]] = {
        "save": {n: [] for n in (*names, "fabric-checksums")},
        "load": {n: [] for n in (*names[:3], "fabric-verify")},
    }
    for round_index in range(rounds):
        order = names[round_index % 4 :] + names[: round_index % 4]
        paths = {}
        for name in order:
            path = paths[name] = fresh(f"{name}-{megabytes}")
            if _rank() == 0:
                os.sync()
            dist.barrier()
            if name.startswith("raw"):
                seconds = timed(raw_save, path)
            elif name == "fabric":
                seconds = timed(fabric.save, path, {"model": fabric_model})
            else:
                seconds = async_blocking(path)
            results["save"][name].append(seconds)
        for name in (n for n in order if n != "fabric-async"):
            path = paths[name]
            if name.startswith("raw"):
                seconds = timed(raw_load, path)
            else:
                seconds = timed(fabric.load, path, {"model": fabric_model})
            results["load"][name].append(seconds)
            if name == "fabric":  # the parts of fabric's time that DCP does not have, measured alone
                results["save"]["fabric-checksums"].append(timed(checksums_only, path))
                results["load"]["fabric-verify"].append(timed(verify_only, path))
        for path in paths.values():
            fresh(os.path.basename(path))
    _write(out, {"times": results, "state_bytes": state_bytes, "world": world})
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "steps":
        steps(rest[0], rest[1], int(rest[2]), int(rest[3]))
    elif mode == "memory":
        memory(rest[0], rest[1])
    elif mode == "checkpoint":
        checkpoint(int(rest[0]), rest[1], int(rest[2]), rest[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}: steps, memory or checkpoint")
