"""One XLA cell of the model matrix: a tiny ``transformers`` model on one XLA strategy and precision.

Started by ``tests/xla/test_xla_models.py`` as ``python xla_model_cell.py OUT_DIR MODEL STRATEGY PRECISION``
with ``PJRT_DEVICE=CPU`` and ``CPU_NUM_DEVICES`` 1 (``single_xla``) or 2 (``xla``, ``xla_fsdp``: SPMD, one
process driving both devices). The model, its batches and the reference come from ``tests/models/zoo.py``,
the same as the matrix's other cells. In one process it:

1. computes the reference on the plain CPU (eager, no torch-xla): 4 AdamW steps on the global batch of 4 rows;
2. trains the same 4 steps on XLA, the batches coming through ``setup_dataloaders`` (SPMD shards each one over
   the devices), and saves a checkpoint after step 2 with the full expected state beside it, in the layout
   ``tests/models/offline.py`` reads (load on one CPU process, ``fabric consolidate``, ``from_pretrained``);
3. ``generate()`` through ``mark_forward_method``, compared with the reference model's tokens;
4. resumes from the step-2 checkpoint in a differently seeded model and a fresh optimizer: steps 3-4 must
   repeat exactly;
5. trains 2 steps with activation checkpointing on the blocks through the strategy's
   ``activation_checkpointing_policy`` (torch-xla's ``checkpoint_module``; the library's
   ``gradient_checkpointing_enable`` uses ``torch.utils.checkpoint``, which fails on XLA: it looks for a
   ``torch.xla`` module);
6. creates the model under ``init_module()`` and ``init_module(empty_init=True)`` with the same seed: both must
   give the eager CPU construction's weights exactly (``transformers``' ``_init_weights`` included).

Writes ``OUT_DIR/rank0.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch
from torch.utils.data import DataLoader, Dataset

from fabric import Fabric
from tests.models.zoo import SPECS, Spec

STEPS, SAVE_AT, LR, ROWS = 4, 2, 1e-2, 4


class Batches(Dataset):
    """Row ``i`` of the run: the rows of every step's global batch, one after the other (no shuffle), so that a
    loader with ``batch_size=4`` yields ``spec.batch(step)`` at step ``step``."""

    def __init__(self, spec: Spec) -> None:
        self.batches = [spec.batch(step, slice(0, ROWS)) for step in range(STEPS)]

    def __len__(self) -> int:
        return STEPS * ROWS

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index % ROWS] for k, v in self.batches[index // ROWS].items()}


def cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy (an SPMD-sharded XLA tensor comes back whole)."""
    return tensor.detach().cpu().float().clone()


def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, as float32 CPU copies."""
    found = {name: cpu(p) for name, p in module.named_parameters()}
    found.update({f"buffer:{name}": cpu(b) for name, b in module.named_buffers()})
    return found


def reference(spec: Spec, precision: str) -> tuple[list[float], Any]:
    """The plain model on the CPU, one process, the whole global batch per step (what SPMD computes)."""
    torch.manual_seed(0)
    model = spec.build()
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = model(**spec.batch(step, slice(0, ROWS))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses, model


def setup(fabric: Fabric, spec: Spec, seed: int, use_cache: bool = True) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = spec.build()
    model.config.use_cache = use_cache
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    return fabric.setup(model, optimizer)


def main(out_dir: str, model_name: str, strategy: str, precision: str) -> None:
    spec = SPECS[model_name]
    out = Path(out_dir)
    result: dict[str, Any] = {}

    def check(name: str, function: Any) -> None:
        try:
            result[name] = function()
        except Exception:
            result[name] = {"error": traceback.format_exc()}

    # launched before the reference's CPU backward: a backward run before the XLA runtime starts leaves
    # torch's autograd engine without XLA devices (pytorch/xla#4174; launch would say so)
    fabric = Fabric(accelerator="xla", devices="auto", strategy=strategy, precision=precision)
    fabric.launch()
    ref_losses, ref_model = reference(spec, precision)
    result["reference_losses"] = ref_losses
    with torch.no_grad():
        result["reference_generated"] = ref_model.generate(
            **spec.prompt(), max_new_tokens=3, do_sample=False
        ).tolist()
    result["strategy"] = type(fabric.strategy).__name__
    result["num_devices"] = getattr(fabric.strategy, "num_devices", 1)
    loader = fabric.setup_dataloaders(DataLoader(Batches(spec), batch_size=ROWS, shuffle=False))
    checkpoint = out / ("checkpoint" if fabric.strategy.checkpoint_layout == "sharded" else "checkpoint.pt")

    def run(
        model: Any, optimizer: Any, steps: range, runner: Fabric = fabric
    ) -> tuple[list[float], list[float]]:
        losses, times = [], []
        for batch in itertools.islice(iter(loader), steps.start, steps.stop):
            started = time.perf_counter()
            loss = model(**batch).loss
            runner.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))  # the strategy cut the step's graph after optimizer.step()
            times.append(time.perf_counter() - started)
        return losses, times

    def train_save_resume() -> dict[str, Any]:
        model, optimizer = setup(fabric, spec, seed=0)
        first, first_times = run(model, optimizer, range(SAVE_AT))
        fabric.save(checkpoint, {"model": model, "optimizer": optimizer, "step": SAVE_AT})
        module = model.module
        names = {id(p): n for n, p in module.named_parameters()}
        module.eval()
        with torch.no_grad():
            logits = cpu(model(**fabric.to_device(spec.logits_inputs())).logits)
        module.train()
        torch.save(
            {
                "params": {n: cpu(p) for n, p in module.named_parameters()},
                "exp_avg": {names[id(p)]: cpu(s["exp_avg"]) for p, s in optimizer.state.items()},
                "logits": logits,
            },
            out / "expected.pt",
        )
        rest, rest_times = run(model, optimizer, range(SAVE_AT, STEPS))
        model.mark_forward_method("generate")
        with torch.no_grad():
            started = time.perf_counter()
            generated = model.generate(**fabric.to_device(spec.prompt()), max_new_tokens=3, do_sample=False)
            generate_s = time.perf_counter() - started
        # resume: a differently seeded model and a fresh optimizer, loaded from the step-2 checkpoint
        model2, optimizer2 = setup(fabric, spec, seed=123)
        state = {"model": model2, "optimizer": optimizer2, "step": 0}
        fabric.load(checkpoint, state)
        resumed, _ = run(model2, optimizer2, range(state["step"], STEPS))
        return {
            "losses": first + rest,
            "resumed_losses": resumed,
            "step_times_s": first_times + rest_times,
            "generated": generated.cpu().tolist(),
            "generate_s": generate_s,
        }

    check("train", train_save_resume)

    def checkpointing() -> dict[str, Any]:
        # the strategy's activation_checkpointing_policy, as for FSDP; a second Fabric in the same process
        strategy_class = type(fabric.strategy)
        policy = {spec.block_class()}
        checkpointed_fabric = Fabric(
            accelerator="xla",
            devices="auto",
            strategy=strategy_class(activation_checkpointing_policy=policy),
            precision=precision,
        )
        checkpointed_fabric.launch()
        # a recomputed block would append to the key-value cache twice: the strategy refuses use_cache=True
        model, optimizer = setup(checkpointed_fabric, spec, seed=0, use_cache=False)
        losses, _ = run(model, optimizer, range(2), checkpointed_fabric)
        checkpointed = sum(hasattr(m, "_xla_checkpointed_forward_original") for m in model.module.modules())
        return {"losses": losses, "checkpointed": checkpointed}

    check("checkpointing", checkpointing)

    def initial_weights() -> dict[str, Any]:
        started = time.perf_counter()
        # the reference: the eager CPU construction under the same seed, in the precision's default dtype and
        # with its cast of the buffers (Llama's float32 inv_freq in bf16-true), as `setup` casts them
        torch.manual_seed(0)
        precision = fabric.strategy.precision
        with precision.module_init_context():
            expected = tensors(precision.convert_module(spec.build()))
        made = []
        for empty_init in (False, True):
            torch.manual_seed(0)
            with fabric.init_module(empty_init=empty_init):
                model = spec.build()
            made.append(tensors(fabric.setup_module(model).module))
        eager, empty = made

        def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
            return max(float((a[k] - b[k]).abs().max()) for k in a)

        return {
            "same_names": eager.keys() == empty.keys() == expected.keys(),
            "max_diff": diff(eager, empty),
            "max_diff_to_cpu": diff(eager, expected),
            "differ": sorted(k for k in eager if not torch.equal(eager[k], empty[k]))[:8],
            "seconds": time.perf_counter() - started,
        }

    check("empty_init", initial_weights)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "rank0.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:5])
