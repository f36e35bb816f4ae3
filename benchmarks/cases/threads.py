"""CPU time of a 4-process tensor-parallel run (2x2 mesh) on CPU, and the threads each process uses.

Wall time alone hides oversubscription: four processes that each start an OpenMP pool the size of the
machine finish in about the same wall time on a small machine, but their idle OpenMP workers spin
(busy-wait) between ops and burn CPU time the other processes could have used. This figure runs the
same small tensor-parallel training (``parallelize_module`` with ``ColwiseParallel``/``RowwiseParallel``
on a 2x2 ``(data, tensor)`` mesh, 4 processes, gloo) three ways, **without** ``OMP_NUM_THREADS`` in the
environment, as a user would start it:

* raw PyTorch under ``torchrun --nproc_per_node=4`` (torchrun sets ``OMP_NUM_THREADS=1`` per worker when
  it is unset);
* ``python train.py`` with ``Fabric(devices=4, strategy=ModelParallelStrategy(...))`` (fabric's
  subprocess launcher);
* the same with Lightning Fabric.

It reports wall time, CPU time of all processes (each rank's own ``getrusage(RUSAGE_SELF)`` at its end,
summed: the parent's ``RUSAGE_CHILDREN`` misses children a launcher does not wait for, as Lightning's
subprocess launcher does not), and what rank 0 saw:
``torch.get_num_threads()``, ``OMP_NUM_THREADS`` and the number of OS threads of the process.

Run as a script this file is the measured program: ``threads.py raw|fabric|lightning``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from harness import (
    FABRIC,
    IMPL_KEYS,
    LIGHTNING,
    PYTHON,
    RAW,
    Row,
    Settings,
    Table,
    child_env,
    failure_reason,
    free_port,
    log,
    run,
)

TIMEOUT = 300.0
OUTPUT_VARIABLE = "BENCH_THREADS_FILE"
STEPS = 20
WIDTH = 512


def _command(name: str, port: int) -> list[str]:
    if name == RAW:
        return [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=4",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            __file__,
            "raw",
        ]
    return [PYTHON, __file__, IMPL_KEYS[name]]


def measure(settings: Settings) -> list[Table]:
    names = [RAW, FABRIC, LIGHTNING]
    labels = {
        RAW: "raw PyTorch, `torchrun --nproc_per_node=4`",
        FABRIC: "fabric, `python train.py` (subprocess launcher)",
        LIGHTNING: "lightning.fabric, `python train.py`",
    }
    rows = {name: Row(labels[name], short=IMPL_KEYS[name]) for name in names}
    seen: dict[str, dict] = {}
    rounds = 1  # the effect measured is several-fold; one run each is enough on a busy machine
    for name in names:
        if not settings.installed(name):
            rows[name].note = "not installed"
    for round_index in range(rounds):
        log(f"tensor parallel, 4 processes: round {round_index + 1}/{rounds}")
        for name in settings.rotation(names, round_index):
            if rows[name].note:
                continue
            output = settings.workdir / f"threads-{IMPL_KEYS[name]}.json"
            port = free_port()
            env = child_env(
                **{OUTPUT_VARIABLE: str(output), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            )
            # as a user starts it: no thread settings of ours (child_env pins 1 thread for the other figures)
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.pop(key, None)
            done = run(_command(name, port), timeout=TIMEOUT, env=env, cwd=settings.workdir)
            if done.returncode != 0 or done.timed_out or not output.exists():
                rows[name].note = f"unavailable: {failure_reason(done)}"
                log(f"  threads {name}: {rows[name].note}")
                continue
            seen[name] = json.loads(output.read_text())
            rows[name].samples.append(done.seconds)
            rows[name].cpu_samples.append(seen[name]["cpu_all_ranks"])
    for name, row in rows.items():
        cpu = [value for value in row.cpu_samples if value is not None]
        info = seen.get(name, {})
        row.extra = {
            "CPU time, all processes": f"{statistics.median(cpu):.1f} s" if cpu else "—",
            "CPU / wall": f"{statistics.median(cpu) / row.median:.2f}" if cpu and row.median else "—",
            "torch threads per process": str(info.get("torch_threads", "—")),
            "OMP_NUM_THREADS": str(info.get("omp_num_threads", "—")),
            "OS threads (rank 0)": str(info.get("os_threads", "—")),
        }
    return [
        Table(
            title="Tensor parallel, 2x2 mesh, 4 processes on CPU: wall and CPU time",
            unit="s",
            rows=list(rows.values()),
            description=(
                f"{STEPS} steps of a {WIDTH}-wide MLP, `ColwiseParallel`/`RowwiseParallel` over the tensor "
                f"dimension, gloo; started without `OMP_NUM_THREADS`. Median over {rounds} runs each "
                f"(process start to exit). CPU time: user + system of all 4 processes, "
                f"each measured by itself at its end (`getrusage(RUSAGE_SELF)`, summed over ranks); CPU / wall above the number of cores means busy-waiting "
                f"threads. The columns on threads are what rank 0 saw at the end."
            ),
            extra_columns=[
                "CPU time, all processes",
                "CPU / wall",
                "torch threads per process",
                "OMP_NUM_THREADS",
                "OS threads (rank 0)",
            ],
            chart_label="TP 4 proc",
        )
    ]


# ------------------------------------------------------------------------------------ measured program
def _parallelize(model, mesh):  # type: ignore[no-untyped-def]
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp_mesh = mesh["tensor_parallel"] if mesh.ndim > 1 else mesh
    return parallelize_module(model, tp_mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def _os_threads() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def _main(mode: str) -> None:
    import resource

    import torch
    import torch.distributed as dist
    from torch import nn

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.ReLU(), nn.Linear(4 * WIDTH, WIDTH))

    if mode == "raw":
        from torch.distributed.device_mesh import init_device_mesh

        dist.init_process_group("gloo")
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("data_parallel", "tensor_parallel"))
        module = _parallelize(model(), mesh)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
        rank = dist.get_rank()
        data_rank = mesh["data_parallel"].get_local_rank()

        def backward(loss: torch.Tensor) -> None:
            loss.backward()
            # data parallel over the other mesh dimension, by hand
            for parameter in module.parameters():
                if parameter.grad is not None:
                    grad = parameter.grad
                    local = grad.to_local() if hasattr(grad, "to_local") else grad
                    dist.all_reduce(local, group=mesh["data_parallel"].get_group())
                    local /= 2

    else:
        if mode == "fabric":
            from fabric import Fabric
            from fabric.strategies import ModelParallelStrategy
        else:
            from lightning.fabric import Fabric
            from lightning.fabric.strategies import ModelParallelStrategy
        strategy = ModelParallelStrategy(_parallelize, data_parallel_size=2, tensor_parallel_size=2)
        fabric = Fabric(accelerator="cpu", devices=4, strategy=strategy)
        fabric.launch()
        module = fabric.setup_module(model())
        optimizer = fabric.setup_optimizers(torch.optim.SGD(module.parameters(), lr=0.01))
        rank = fabric.global_rank
        data_rank = fabric.global_rank // 2
        backward = fabric.backward

    generator = torch.Generator().manual_seed(data_rank)
    for _ in range(STEPS):
        x = torch.randn(64, WIDTH, generator=generator)
        loss = module(x).pow(2).mean()
        backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    # Each process's own CPU time, summed over the ranks: a launcher that does not wait for its children
    # (Lightning's subprocess launcher leaves them to exit on their own) hides theirs from the parent's
    # getrusage(RUSAGE_CHILDREN), which would make it look 4 times cheaper than it is.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = torch.tensor([usage.ru_utime + usage.ru_stime], dtype=torch.float64)
    dist.all_reduce(cpu)
    if rank == 0:
        info = {
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "os_threads": _os_threads(),
            "cpu_all_ranks": float(cpu.item()),
        }
        with open(os.environ[OUTPUT_VARIABLE], "w") as file:
            json.dump(info, file)
    dist.barrier()
    if mode == "raw":
        dist.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1])
