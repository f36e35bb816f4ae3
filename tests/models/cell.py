"""One cell of the model matrix: one model, one strategy, one precision, on 2 processes, every check.

Started by ``tests/models/test_models.py`` as ``python cell.py OUT_DIR MODEL STRATEGY PRECISION``; fabric
re-runs it for rank 1. In one launch it:

1. trains 4 steps (rank r takes rows of the global batch) and records the per-step losses, averaged over
   the data-parallel ranks, beside a reference computed in this process on one device with the plain
   model (each half of the batch forwarded separately and the two losses averaged, which is DDP's
   arithmetic, BatchNorm's per-replica statistics included);
2. saves a checkpoint after step 2 (model, optimizer, step) with the full expected state beside it, for
   ``offline.py`` (load on one process, ``fabric consolidate``, ``from_pretrained``);
3. resumes from that checkpoint in a fresh model and optimizer: steps 3-4 must repeat exactly;
4. ``generate()`` through ``mark_forward_method`` (decoders and T5), compared with the reference model;
5. trains 2 steps with activation checkpointing on the blocks (the strategy's policy for FSDP; the
   library's ``gradient_checkpointing_enable`` otherwise);
6. for sharding strategies, ``init_module(empty_init=True)`` gives the initial weights of eager creation.

Rank 0 writes ``OUT_DIR/result.json`` (and every rank ``rank{N}.json``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from fabric import Fabric
from fabric.strategies import FSDPStrategy, ModelParallelStrategy
from tests.models.zoo import SPECS, Spec, parallelize_decoder

STEPS, SAVE_AT, LR = 4, 2, 1e-2


def full(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).float().clone()


def make_strategy(name: str, spec: Spec, checkpointing: bool = False) -> Any:
    if name == "ddp":
        return "ddp"
    if name == "fsdp":
        return FSDPStrategy(activation_checkpointing_policy={spec.block_class()} if checkpointing else None)
    if name == "model_parallel":
        return ModelParallelStrategy(parallelize_decoder, data_parallel_size=1, tensor_parallel_size=2)
    if name.startswith("deepspeed_stage_"):
        return name  # the registry's default ZeRO config; activation checkpointing is the library's own
    raise ValueError(name)


def is_deepspeed(name: str) -> bool:
    return name.startswith("deepspeed_stage_")


def full_param(param: torch.Tensor, deepspeed: bool) -> torch.Tensor:
    """The whole fp32 value of a parameter; under ZeRO-3 gathered from the partitions (a collective)."""
    if deepspeed:
        from deepspeed.utils import safe_get_full_fp32_param

        return full(safe_get_full_fp32_param(param))
    return full(param)


def full_exp_avg(param: torch.Tensor, optimizer: Any, deepspeed: bool) -> torch.Tensor:
    """AdamW's ``exp_avg`` of one parameter, whole; DeepSpeed keeps it in its flat partitions."""
    if deepspeed:
        from deepspeed.utils import safe_get_full_optimizer_state

        return full(safe_get_full_optimizer_state(param, "exp_avg"))
    return full(optimizer.state[param]["exp_avg"])


def rows(fabric: Fabric) -> slice:
    """This process's rows of the 4-row global batch (by data-parallel rank: TP ranks share data)."""
    kwargs = fabric.strategy.distributed_sampler_kwargs or {"num_replicas": 1, "rank": 0}
    per = 4 // kwargs["num_replicas"]
    return slice(kwargs["rank"] * per, (kwargs["rank"] + 1) * per)


def reference(spec: Spec, precision: str) -> tuple[list[float], Any]:
    """One process, plain model: the two halves of each batch forwarded apart, their losses averaged."""
    torch.manual_seed(0)
    model = spec.build()
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        with autocast(precision):
            halves = [model(**spec.batch(step, slice(i, i + 2))).loss for i in (0, 2)]
        loss = (halves[0] + halves[1]) / 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses, model


def autocast(precision: str) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()


def train_steps(
    fabric: Fabric, spec: Spec, model: Any, optimizer: Any, steps: range
) -> tuple[list[float], float]:
    losses, started = [], time.perf_counter()
    for step in steps:
        loss = model(**spec.batch(step, rows(fabric))).loss
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(fabric.all_reduce(loss.detach().float(), reduce_op="mean")))
    return losses, (time.perf_counter() - started) / max(len(steps), 1)


def setup(fabric: Fabric, spec: Spec, seed: int, checkpointing: bool = False) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = spec.build()
    model.train()
    if checkpointing and spec.strategy_checkpointing:
        # torch's wrapper on the blocks, as FSDPStrategy(activation_checkpointing_policy=...) applies it
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        block = spec.block_class()
        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, block))
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    return fabric.setup(model, optimizer)


def expected_state(model: Any, optimizer: Any, spec: Spec, deepspeed: bool = False) -> dict[str, Any]:
    """Full weights, AdamW's ``exp_avg`` by name and the logits on a fixed input: what offline.py checks."""
    module = model.module
    # the sharded parameters the optimizer holds, named before the forward below: a root that FSDP2 does
    # not reshard after forward (the default of `fully_shard(model)` in a parallelize_fn) keeps its
    # unsharded parameters registered until the next backward
    named = list(module.named_parameters())
    module.eval()
    with torch.no_grad():
        logits = full(model(**spec.logits_inputs()).logits)
    module.train()
    return {
        "params": {n: full_param(p, deepspeed) for n, p in named},
        "exp_avg": {n: full_exp_avg(p, optimizer, deepspeed) for n, p in named},
        "logits": logits,
    }


def main(out_dir: str, model_name: str, strategy_name: str, precision: str) -> None:
    spec = SPECS[model_name]
    fabric = Fabric(
        accelerator="cpu", devices=2, strategy=make_strategy(strategy_name, spec), precision=precision
    )
    fabric.launch()
    out = Path(out_dir)
    result: dict[str, Any] = {}

    def check(name: str, function: Any) -> None:
        started = time.perf_counter()
        try:
            result[name] = function()
        except Exception:
            result[name] = {"error": traceback.format_exc()}
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)

    ref_losses, ref_model = reference(spec, precision)
    result["reference_losses"] = ref_losses
    deepspeed = is_deepspeed(strategy_name)
    sharded = deepspeed or fabric.strategy.checkpoint_layout == "sharded"
    checkpoint = out / ("checkpoint" if sharded else "checkpoint.pt")

    def train_save_resume() -> dict[str, Any]:
        model, optimizer = setup(fabric, spec, seed=0)
        first, step_time = train_steps(fabric, spec, model, optimizer, range(SAVE_AT))
        fabric.save(checkpoint, {"model": model, "optimizer": optimizer, "step": SAVE_AT})
        expected = expected_state(model, optimizer, spec, deepspeed)
        if fabric.global_rank == 0:
            torch.save(expected, out / "expected.pt")
        rest, _ = train_steps(fabric, spec, model, optimizer, range(SAVE_AT, STEPS))
        generated = None
        if spec.kind != "image":
            model.mark_forward_method("generate")
            with torch.no_grad():
                generated = model.generate(**spec.prompt(), max_new_tokens=3, do_sample=False).tolist()
        # resume: a differently seeded model and a fresh optimizer, loaded from the step-2 checkpoint
        model2, optimizer2 = setup(fabric, spec, seed=123)
        state = {"model": model2, "optimizer": optimizer2, "step": 0}
        fabric.load(checkpoint, state)
        resumed, _ = train_steps(fabric, spec, model2, optimizer2, range(state["step"], STEPS))
        return {
            "losses": first + rest,
            "resumed_losses": resumed,
            "step_time_s": step_time,
            "generated": generated,
        }

    check("train", train_save_resume)
    if spec.kind != "image":
        with torch.no_grad(), autocast(precision):
            result["reference_generated"] = ref_model.generate(
                **spec.prompt(), max_new_tokens=3, do_sample=False
            ).tolist()

    def checkpointing() -> dict[str, Any]:
        # transformers 5's T5 under torch's checkpoint wrapper fails in the recomputation ("selected a
        # different compiled graph"); its own gradient_checkpointing_enable works: used for T5 instead
        if strategy_name == "fsdp" and spec.strategy_checkpointing:
            ac_fabric = Fabric(
                accelerator="cpu", devices=2, strategy=make_strategy("fsdp", spec, checkpointing=True),
                precision=precision,
            )  # fmt: skip
            model, optimizer = setup(ac_fabric, spec, seed=0)
            wrapped = sum(type(m).__name__.endswith("CheckpointWrapper") for m in model.module.modules())
        else:
            ac_fabric = fabric
            model, optimizer = setup(fabric, spec, seed=0, checkpointing=True)
            module = model.module
            wrapped = sum(type(m).__name__.endswith("CheckpointWrapper") for m in module.modules()) or int(
                getattr(module, "is_gradient_checkpointing", False)
            )
        losses, _ = train_steps(ac_fabric, spec, model, optimizer, range(2))
        return {"losses": losses, "checkpointed_blocks": wrapped}

    check("checkpointing", checkpointing)

    def empty_init() -> dict[str, Any]:
        params = []
        for empty in (False, True):
            torch.manual_seed(0)
            with fabric.init_module(empty_init=empty):
                model = spec.build()
            model = fabric.setup_module(model)
            params.append({n: full(p) for n, p in model.module.named_parameters()})
            buffers = {n: full(b) for n, b in model.module.named_buffers()}
            params[-1].update({f"buffer:{n}": b for n, b in buffers.items()})
        eager, meta = params
        return {
            "same_keys": eager.keys() == meta.keys(),
            "max_diff": max(float((eager[k] - meta[k]).abs().max()) for k in eager),
            "differ": sorted(k for k in eager if not torch.equal(eager[k], meta[k]))[:8],
        }

    # DDP's empty init leaves memory uninitialized, as in Lightning: N/A. ZeRO-3's empty init is
    # deepspeed.zero.Init, which runs the model's own initialization on each partition: not comparable
    if strategy_name not in ("ddp", "deepspeed_stage_2", "deepspeed_stage_3"):
        check("empty_init", empty_init)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / f"rank{fabric.global_rank}.json").write_text(json.dumps(result, indent=1))
    fabric.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:5])
