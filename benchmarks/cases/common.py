"""The models, data and training steps that every implementation runs, written as each tool documents it.

Imported only inside measured child processes (it imports torch). The four implementations train the
same model on the same batches; they differ only in the lines their own documentation asks for:

* raw PyTorch: ``torch.autocast`` around forward and loss, ``loss.backward()``; DDP by hand.
* fabric / lightning.fabric: ``Fabric(...)``, ``fabric.setup``, ``fabric.setup_dataloaders``,
  ``fabric.backward(loss)``.
* accelerate: ``Accelerator(cpu=True, mixed_precision=...)``, ``accelerator.prepare``,
  ``accelerator.backward(loss)``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH_SIZE = 32
BATCHES_PER_EPOCH = {"mlp": 64, "conv": 32}
Step = Callable[[torch.Tensor, torch.Tensor], None]


def make_model(name: str) -> nn.Module:
    """``mlp``: 32->64->10, where per-step overhead dominates. ``conv``: two conv layers on 3x32x32."""
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    if name == "conv":
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 8 * 8, 10),
        )
    raise ValueError(f"unknown model {name!r}")


def make_dataset(name: str) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    n = BATCH_SIZE * BATCHES_PER_EPOCH[name]
    shape = (n, 32) if name == "mlp" else (n, 3, 32, 32)
    return TensorDataset(
        torch.randn(shape, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    )


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def plain_loader(dataset: TensorDataset) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, drop_last=True)


def fixed_batches(dataset: TensorDataset, count: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches made up front: the "no dataloader" cases time the model's step alone."""
    x, y = dataset.tensors
    return [
        (x[i * BATCH_SIZE : (i + 1) * BATCH_SIZE], y[i * BATCH_SIZE : (i + 1) * BATCH_SIZE])
        for i in range(count)
    ]


@dataclass(frozen=True)
class SharedData:
    """One dataset and its pre-made batches, handed to every implementation of an interleaved round.

    All of them then read the very same tensors (the same memory), so no implementation is timed on data
    that happens to sit better in memory than another's.
    """

    model_name: str
    dataset: TensorDataset
    batches: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def make(cls, model_name: str) -> SharedData:
        dataset = make_dataset(model_name)
        return cls(model_name, dataset, fixed_batches(dataset))


def shared_data(
    model_name: str, data: SharedData | None
) -> tuple[TensorDataset, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``data``'s dataset and batches, or fresh ones when the caller shares none."""
    if data is None:
        data = SharedData.make(model_name)
    elif data.model_name != model_name:
        raise ValueError(f"data was made for {data.model_name!r}, not for the model {model_name!r}")
    return data.dataset, data.batches


def cycle(source: Iterable[Any]) -> Iterator[Any]:
    """The batches of ``source`` over and over, starting a new epoch (a new ``iter()``) when one ends.

    A block of steps continues where the previous block of the same implementation stopped, so a
    loader's ``iter()`` is paid once per epoch, as in a training loop, however short the blocks are.
    """
    while True:
        yield from source


def rotated(names: Iterable[str], first: int) -> list[str]:
    """``names`` starting with the one at ``first`` (mod their number).

    The order in which a round prepares its implementations: the allocator hands out memory in
    allocation order, so a fixed order could give one implementation the same kind of memory every round.
    """
    names = list(names)
    shift = first % len(names) if names else 0
    return names[shift:] + names[:shift]


def in_order(contenders: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``contenders`` in the order of ``names`` (the blocks' base order, whatever the preparation order)."""
    return {name: contenders[name] for name in names if name in contenders}


@dataclass
class BlockTimes:
    """What :func:`time_interleaved` measured for one implementation over a round."""

    wall: float = 0.0  # seconds
    cpu: float = 0.0  # seconds of CPU time of this process
    steps: int = 0
    probed: int = 0  # sum over its blocks of how much ``probe`` grew (e.g. frames dynamo compiled)


def time_interleaved(
    contenders: dict[str, tuple[Step, Iterator[Any]]],
    block_steps: int,
    blocks: int,
    first: int = 0,
    probe: Callable[[], int] | None = None,
    sync: Callable[[], None] | None = None,
) -> dict[str, BlockTimes]:
    """Time every contender in ``blocks`` short blocks of ``block_steps`` steps each, taking turns.

    In block b the contenders run one after the other, starting with contender ``first + b`` (mod their
    number), so each goes first equally often when ``blocks`` is a multiple of their number; every other
    sweep of that many blocks runs the order backwards, so each also follows different ones. A slow
    stretch of the machine (another job, the clock, steal time) then falls on all of them alike within
    the round, instead of on whichever happened to run during it. Each contender's iterator is advanced
    ``block_steps`` times per block (see :func:`cycle`). ``sync`` runs, untimed, before every block (DDP:
    a barrier, so that each rank's block starts together).
    """
    names = list(contenders)
    times = {name: BlockTimes() for name in names}
    # what earlier rounds left behind is collected now, not in the middle of some implementation's block
    gc.collect()
    for block in range(blocks):
        shift = (first + block) % len(names)
        order = names[shift:] + names[:shift]
        if (block // len(names)) % 2:
            # every other sweep runs backwards, so that no implementation always follows the same one
            order.reverse()
        for name in order:
            step, batches = contenders[name]
            if sync is not None:
                sync()
            before = probe() if probe is not None else 0
            cpu_start = time.process_time()
            start = time.perf_counter()
            for _ in range(block_steps):
                x, y = next(batches)
                step(x, y)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            measured = times[name]
            measured.wall += wall
            measured.cpu += cpu
            measured.steps += block_steps
            if probe is not None:
                measured.probed += probe() - before
    return times


def global_state() -> dict[str, str]:
    """Process-wide settings an implementation could change behind the others' backs in a shared process.

    Compared before and after each implementation is constructed, prepared and warmed up: a change here
    would alter the steps of the implementations timed after it in the same process.
    """
    import os
    import sys

    from torch.utils.data import BatchSampler

    state = {
        "torch.get_num_threads()": str(torch.get_num_threads()),
        "torch.is_grad_enabled()": str(torch.is_grad_enabled()),
        "torch.is_autocast_enabled('cpu')": str(torch.is_autocast_enabled("cpu")),
        "torch.get_autocast_dtype('cpu')": str(torch.get_autocast_dtype("cpu")),
        "torch.get_default_dtype()": str(torch.get_default_dtype()),
        "torch.are_deterministic_algorithms_enabled()": str(torch.are_deterministic_algorithms_enabled()),
        "torch.is_anomaly_enabled()": str(torch.is_anomaly_enabled()),
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.backends.mkldnn.enabled": str(torch.backends.mkldnn.enabled),
        # by identity: a wrapper made with functools.wraps carries the original's name
        "torch.compile": _function(torch.compile),
        "DataLoader.__init__": _function(DataLoader.__init__),
        "BatchSampler.__init__": _function(BatchSampler.__init__),
        "gc": f"enabled={gc.isenabled()} thresholds={gc.get_threshold()}",
        "sys.getswitchinterval()": str(sys.getswitchinterval()),
        "sys.getprofile() / gettrace()": f"{sys.getprofile()} / {sys.gettrace()}",
    }
    state.update({f"env {key}": value for key, value in os.environ.items()})
    return state


def _function(function: Any) -> str:
    return f"{function.__module__}.{function.__qualname__} (id {id(function):#x})"


def state_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Readable differences between two :func:`global_state` snapshots."""
    return [
        f"{key}: {before.get(key, '(unset)')} -> {after.get(key, '(unset)')}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


class StateWatch:
    """Which process-wide state (see :func:`global_state`) each implementation changed, action by action."""

    def __init__(self) -> None:
        self.changes: dict[str, list[str]] = {}

    def run(self, impl: str, action: Callable[[], Any]) -> Any:
        """``action()``, remembering what it changed under ``impl``'s name."""
        before = global_state()
        result = action()
        for change in state_changes(before, global_state()):
            found = self.changes.setdefault(impl, [])
            if change not in found:
                found.append(change)
        return result


def time_steps(step: Step, source: Iterable[Any], steps: int) -> float:
    """Seconds per step over ``steps`` steps, cycling through ``source`` (a loader or a list of batches)."""
    return time_steps_with_cpu(step, source, steps)[0]


def warm_up(step: Step, source: Iterable[Any], seconds: float) -> float:
    """Run steps (a compiled model compiles in the first) until ``seconds`` are spent; return the last step time.

    The step time seen last sizes the measured rounds.
    """
    time_steps(step, source, 3)
    spent, chunk, per_step = 0.0, 5, 0.0
    while spent < seconds:
        per_step = time_steps(step, source, chunk)
        spent += per_step * chunk
        chunk = min(chunk * 2, 1000)
    return per_step


def time_steps_with_cpu(step: Step, source: Iterable[Any], steps: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds per step (the CPU time leaves out time this process sat preempted)."""
    done = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    while done < steps:
        for x, y in source:
            step(x, y)
            done += 1
            if done >= steps:
                break
    wall = time.perf_counter() - start
    return wall / steps, (time.process_time() - cpu_start) / steps


# ------------------------------------------------------------------------------------ implementations
class Engine:
    """One implementation, set up once per process; ``prepare`` turns a fresh model into a step.

    ``compiled``: the model goes through ``torch.compile`` (default inductor) where each tool's
    documentation puts it: raw PyTorch compiles the DDP-wrapped model (PyTorch's DDP + compile recipe);
    fabric and lightning.fabric get the compiled model in ``setup``, which compiles their wrapper again.
    """

    def prepare(
        self,
        model_name: str,
        use_loader: bool,
        compiled: bool = False,
        data: SharedData | None = None,
    ) -> tuple[Step, Iterable[Any]]:
        raise NotImplementedError


class RawEngine(Engine):
    def __init__(self, precision: str, distributed: bool = False) -> None:
        self.bf16 = precision == "bf16-mixed"
        self.distributed = distributed
        if distributed and not torch.distributed.is_initialized():  # the A/A control finds raw's group
            torch.distributed.init_process_group("gloo")

    def prepare(
        self,
        model_name: str,
        use_loader: bool,
        compiled: bool = False,
        data: SharedData | None = None,
    ) -> tuple[Step, Iterable[Any]]:
        model: nn.Module = make_model(model_name)
        optimizer = make_optimizer(model)
        dataset, batches = shared_data(model_name, data)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel
            from torch.utils.data.distributed import DistributedSampler

            model = DistributedDataParallel(model)
            loader = DataLoader(
                dataset,
                batch_size=BATCH_SIZE,
                sampler=DistributedSampler(dataset, shuffle=True),
                drop_last=True,
            )
        else:
            loader = plain_loader(dataset)
        source = loader if use_loader else batches
        if compiled:
            model = torch.compile(model)  # type: ignore[assignment]

        if self.bf16:

            def step(x: torch.Tensor, y: torch.Tensor) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()

        else:

            def step(x: torch.Tensor, y: torch.Tensor) -> None:
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()

        return step, source


class _FabricLikeEngine(Engine):
    """fabric and lightning.fabric share one API, so one loop serves both."""

    def __init__(self, fabric: Any) -> None:
        self.fabric = fabric
        fabric.launch()

    def prepare(
        self,
        model_name: str,
        use_loader: bool,
        compiled: bool = False,
        data: SharedData | None = None,
    ) -> tuple[Step, Iterable[Any]]:
        fabric = self.fabric
        model = make_model(model_name)
        optimizer = make_optimizer(model)
        if compiled:
            model = torch.compile(model)  # type: ignore[assignment]
        model, optimizer = fabric.setup(model, optimizer)
        dataset, batches = shared_data(model_name, data)
        source = fabric.setup_dataloaders(plain_loader(dataset)) if use_loader else batches

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = F.cross_entropy(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()

        return step, source


class FabricEngine(_FabricLikeEngine):
    def __init__(self, precision: str, distributed: bool = False) -> None:
        from fabric import Fabric

        if distributed:
            super().__init__(Fabric(accelerator="cpu", strategy="ddp", devices=2, precision=precision))
        else:
            super().__init__(Fabric(accelerator="cpu", devices=1, precision=precision))


class LightningEngine(_FabricLikeEngine):
    def __init__(self, precision: str, distributed: bool = False) -> None:
        from lightning.fabric import Fabric

        if distributed:
            super().__init__(Fabric(accelerator="cpu", strategy="ddp", devices=2, precision=precision))
        else:
            super().__init__(Fabric(accelerator="cpu", devices=1, precision=precision))


class AccelerateEngine(Engine):
    def __init__(self, precision: str, distributed: bool = False) -> None:
        from accelerate import Accelerator

        # One Accelerator per process: its state is global and fixes the precision for the process.
        self.accelerator = Accelerator(
            cpu=True, mixed_precision="bf16" if precision == "bf16-mixed" else "no"
        )

    def prepare(
        self,
        model_name: str,
        use_loader: bool,
        compiled: bool = False,
        data: SharedData | None = None,
    ) -> tuple[Step, Iterable[Any]]:
        if compiled:
            raise NotImplementedError(
                "accelerate compiles through its own dynamo_backend setting: not measured"
            )
        accelerator = self.accelerator
        model = make_model(model_name)
        optimizer = make_optimizer(model)
        dataset, batches = shared_data(model_name, data)
        if use_loader:
            model, optimizer, source = accelerator.prepare(model, optimizer, plain_loader(dataset))
        else:
            model, optimizer = accelerator.prepare(model, optimizer)
            source = batches

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = F.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()

        return step, source


ENGINES: dict[str, type[Engine]] = {
    "raw": RawEngine,
    "raw-again": RawEngine,  # the A/A control: the same loop as "raw", prepared and timed separately
    "fabric": FabricEngine,
    "lightning": LightningEngine,
    "accelerate": AccelerateEngine,
}


def make_engine(impl: str, precision: str, distributed: bool = False) -> Engine:
    torch.set_num_threads(1)
    return ENGINES[impl](precision, distributed=distributed)  # type: ignore[call-arg]
