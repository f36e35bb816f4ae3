"""Two-process FSDP checkpoints: write both layouts, load every layout back, strict and non-strict.

``python checkpoint_fsdp.py OUT_DIR`` runs after ``checkpoint_single.py`` wrote ``ws1_sharded/`` and
``plain.pt`` into OUT_DIR. It writes ``fsdp_sharded/`` (a directory, every rank its shard),
``fsdp_full.pt`` (``state_dict_type="full"``: one file from rank 0) and ``fsdp_reference.pt`` (the
values both hold), then loads all four checkpoints into fresh sharded models and optimizers. Every
rank writes ``OUT_DIR/rank{N}.json``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from common import (
    Block,
    NetPlus,
    attempt,
    compare_state,
    fresh,
    full_parameters,
    max_diff,
    report,
    run_sections,
    trained,
    training_state,
)

from fabric import Fabric
from fabric.strategies import FSDPStrategy


def write(fabric: Fabric, out_dir: str) -> dict[str, Any]:
    model, optimizer = trained(fabric, seed=31)
    state = {"model": model, "optimizer": optimizer, "step": 3}
    fabric.save(os.path.join(out_dir, "fsdp_sharded"), {**state, "tag": "sharded"})
    strategy: FSDPStrategy = fabric.strategy  # type: ignore[assignment]
    strategy.state_dict_type = "full"
    try:
        fabric.save(os.path.join(out_dir, "fsdp_full.pt"), {**state, "tag": "full"})
    finally:
        strategy.state_dict_type = "sharded"
    reference = training_state(model, optimizer)
    if fabric.global_rank == 0:
        torch.save(reference, os.path.join(out_dir, "fsdp_reference.pt"))
    return {"files": sorted(os.listdir(os.path.join(out_dir, "fsdp_sharded")))}


def load(fabric: Fabric, path: str, reference_path: str) -> dict[str, Any]:
    model, optimizer = fresh(fabric)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    remainder = fabric.load(path, state)
    result = compare_state(model, optimizer, torch.load(reference_path, weights_only=True))
    optimizer_types = sorted({type(s["exp_avg"]).__name__ for s in optimizer.state.values()})

    def train_on() -> None:
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        fabric.backward(model(x).sum())
        optimizer.step()

    continued = attempt(train_on)
    return {
        **result,
        "step": state["step"],
        "remainder": {k: v for k, v in remainder.items() if isinstance(v, (str, int))},
        "exp_avg_types": optimizer_types,
        "continue_error": continued["message"][:400],
        "continues": continued["raised"] is None
        and all(bool(torch.isfinite(v).all()) for v in full_parameters(model).values()),
    }


def strictness(fabric: Fabric, path: str, reference_path: str) -> dict[str, Any]:
    """A key the checkpoint lacks: strict raises; non-strict loads the rest and returns the remainder."""
    reference = torch.load(reference_path, weights_only=True)
    model, optimizer = fresh(fabric)
    asked_for_more = attempt(lambda: fabric.load(path, {"model": model, "optimizer": optimizer, "absent": 1}))
    model, optimizer = fresh(fabric)
    remainder = fabric.load(path, {"model": model, "optimizer": optimizer, "absent": 1}, strict=False)

    bigger, _ = fresh(fabric, cls=NetPlus)
    missing_parameter = attempt(lambda: fabric.load(path, {"model": bigger}))
    bigger, _ = fresh(fabric, seed=5, cls=NetPlus)
    extra_before = {k: v for k, v in full_parameters(bigger).items() if k.startswith("extra.")}
    partial_remainder = fabric.load(path, {"model": bigger}, strict=False)
    values = full_parameters(bigger)
    return {
        "strict_extra_key": attempt_summary(asked_for_more),
        "lenient_extra_key": {
            **compare_state(model, optimizer, reference),
            "remainder_keys": sorted(remainder),
        },
        "strict_missing_parameter": attempt_summary(missing_parameter),
        "lenient_missing_parameter": {
            "model_diff": max_diff(
                {k: v for k, v in values.items() if not k.startswith("extra.")}, reference["model"]
            ),
            "extra_untouched": max_diff(
                {k: v for k, v in values.items() if k.startswith("extra.")}, extra_before
            ),
            "remainder_keys": sorted(partial_remainder),
        },
    }


def attempt_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"raised": result["raised"], "message": result["message"][:600]}


def main(out_dir: str) -> None:
    fabric = Fabric(accelerator="cpu", strategy=FSDPStrategy(auto_wrap_policy={Block}), devices=2)
    fabric.launch()

    def path(name: str) -> str:
        return os.path.join(out_dir, name)

    results = run_sections(
        {
            "write": lambda: write(fabric, out_dir),
            "sharded_to_fsdp": lambda: load(fabric, path("fsdp_sharded"), path("fsdp_reference.pt")),
            "full_to_fsdp": lambda: load(fabric, path("fsdp_full.pt"), path("fsdp_reference.pt")),
            "ws1_sharded_to_fsdp": lambda: load(fabric, path("ws1_sharded"), path("ws1_reference.pt")),
            "plain_to_fsdp": lambda: load(fabric, path("plain.pt"), path("plain_reference.pt")),
            "strict_sharded": lambda: strictness(fabric, path("fsdp_sharded"), path("fsdp_reference.pt")),
            "strict_full": lambda: strictness(fabric, path("fsdp_full.pt"), path("fsdp_reference.pt")),
        }
    )
    report(out_dir, fabric.global_rank, results)


if __name__ == "__main__":
    main(sys.argv[1])
