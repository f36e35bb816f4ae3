"""The measured program of the DeepSpeed figure (``cases/sharded.py``), run under ``torchrun`` with 2 processes.

    torchrun --nproc_per_node=2 cases/deepspeed_program.py raw|fabric|fabric-defaults STAGE OUT.json STEPS

Trains the transformer stack of the FSDP figure with ZeRO stage STAGE for STEPS AdamW steps, and writes
from rank 0: the median step time after 2 warm-up steps, the peak resident memory growth of the larger
rank from before the model exists, and the config DeepSpeed's engine ended up with (so the runner can
show that both implementations ran the same). Raw: ``deepspeed.initialize(model, optimizer, config)``,
``engine.backward``, ``engine.step``. Fabric: ``Fabric(strategy=DeepSpeedStrategy(config=...))``;
fabric-defaults: ``DeepSpeedStrategy(stage=STAGE)`` with no config, so fabric's own defaults apply
(on a CPU at ZeRO-3: ``deepspeed_config.CPU_ZERO3_SIZES``).
ZeRO-3 builds the model under ``deepspeed.zero.Init`` (raw) or ``fabric.init_module()`` (fabric).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from contextlib import AbstractContextManager
from typing import Any

# benchmarks/ (on PYTHONPATH for the helpers) holds a deepspeed.py of its own: import DeepSpeed with this
# folder and benchmarks/ off the path, then put benchmarks/ back for `cases`.
HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, BENCH)]
import deepspeed  # noqa: E402

sys.path.insert(0, BENCH)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cases.sharded_program import (  # noqa: E402
    BATCH,
    DEVICE,
    LAYERS,
    SEQUENCE,
    WIDTH,
    _init,
    _rss_bytes,
    _tensor_device,
    transformer_stack,
)


def config(stage: int) -> dict[str, Any]:
    """The one config both implementations get (fabric's strategy may only add its defaults)."""
    return {
        "train_micro_batch_size_per_gpu": BATCH,
        "gradient_accumulation_steps": 1,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 0.0,  # what fabric's strategy adds when unset: the same engine either way
    }


def main(impl: str, stage: int, out: str, steps: int) -> None:
    _init()  # gloo on a CPU, nccl with one GPU per rank under benchmarks/gpu.py (BENCH_DEVICE=cuda)
    device = _tensor_device()
    x, y = (
        torch.randn(BATCH, SEQUENCE, WIDTH, device=device),
        torch.randn(BATCH, SEQUENCE, WIDTH, device=device),
    )
    layers = LAYERS * 4
    if impl == "raw":
        deepspeed.init_distributed(dist_backend=dist.get_backend())
        baseline = _rss_bytes()
        init: AbstractContextManager[Any] = (
            deepspeed.zero.Init(config_dict_or_path=config(stage)) if stage == 3 else device
        )
        with init:
            module = transformer_stack(layers)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
        engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=config(stage), dist_init_required=False
        )

        def step() -> None:
            loss = torch.nn.functional.mse_loss(engine(x), y)
            engine.backward(loss)
            engine.step()

        used = engine.config
    else:
        from fabric import Fabric
        from fabric.strategies import DeepSpeedStrategy

        # "fabric": the same config as raw; "fabric-defaults": no config, what `DeepSpeedStrategy(stage=3)` picks
        strategy = (
            DeepSpeedStrategy(stage=stage)
            if impl == "fabric-defaults"
            else DeepSpeedStrategy(config=config(stage))
        )
        fabric = Fabric(accelerator=DEVICE, devices=dist.get_world_size(), strategy=strategy)
        fabric.launch()
        baseline = _rss_bytes()
        with fabric.init_module():
            module = transformer_stack(layers)
        model, optimizer = fabric.setup(module, torch.optim.AdamW(module.parameters(), lr=1e-4))

        def step() -> None:
            loss = torch.nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()

        # the engine the strategy built (one model: one engine); only read, for the config it runs with
        used = next(iter(fabric.strategy._engines.values())).config
    times = []
    for index in range(steps + 2):
        dist.barrier()
        started = time.perf_counter()
        step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - started)
    if DEVICE == "cuda":  # the caching allocator's peak, against its bytes in use before the model
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    growth = torch.tensor([float(peak - baseline)], device=device)
    dist.all_reduce(growth, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        with open(out, "w") as file:
            json.dump(
                {"step_seconds": statistics.median(times), "growth_bytes": float(growth), "config": used},
                file,
                default=str,
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    # the runner's convention (`cases/sharded.py`'s `_launch`): MODE FIRST OUT REST...
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
