"""One 2-process DeepSpeed run: parity with DDP, checkpoint round trips, precision, stage-3 init, errors.

Started by ``tests/strategies/deepspeed/test_deepspeed.py`` as ``python ds_checks.py OUT_DIR
[SECTION ...]``; fabric re-runs the same command for rank 1. After the first ``Fabric`` launched, this
process knows its rank, so further ``Fabric`` objects (DDP as the reference, each ZeRO stage) join
the same process group without starting processes. Every rank writes ``OUT_DIR/rank{N}.json``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fabric import Fabric
from fabric.strategies import DeepSpeedStrategy

STEPS = 20
STAGES = {
    "stage1": {"stage": 1},
    "stage2": {"stage": 2},
    "stage2_offload": {"stage": 2, "offload_optimizer": True},
    "stage3": {"stage": 3},
    "stage3_offload": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
}


class Net(nn.Module):
    """Odd sizes, so that ZeRO's flat partitions split parameters unevenly and need padding."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 17)
        self.hidden = nn.Linear(17, 13)
        self.head = nn.Linear(13, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(torch.relu(self.inp(x)))))


def data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    return x, torch.randn(n, 5, generator=generator) * 0.1 + x[:, :1]


def make(stage: dict[str, Any] | str, precision: str = "32-true", **kwargs: Any) -> Fabric:
    strategy = stage if isinstance(stage, str) else DeepSpeedStrategy(**stage, **kwargs)
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=2, precision=precision)
    fabric.launch()
    return fabric


def full_parameters(fabric: Fabric, model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole float32 parameters by name on every rank (ZeRO-3 partitions are gathered)."""
    return {
        k: v.detach().float().clone() for k, v in fabric.strategy.get_module_state_dict(model.module).items()
    }


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def all_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=rtol, atol=atol) for k in a)


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_steps(fabric: Fabric, model: Any, optimizer: Any, steps: int, seed: int) -> list[float]:
    """Each rank trains on its own batch of 4 per step (DDP semantics: gradients are averaged)."""
    losses = []
    for step in range(steps):
        x, y = data(seed=seed + 1000 * step + fabric.global_rank, n=4)
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss, model=model)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def setup_net(fabric: Fabric, seed: int, lr: float = 1e-2) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = Net()
    return fabric.setup(model, torch.optim.Adam(model.parameters(), lr=lr))


def optimizer_state(optimizer: Any) -> dict[str, torch.Tensor]:
    """The torch optimizer's state inside DeepSpeed's (over this rank's flat fp32 partitions).

    ZeRO swaps its partitions into the torch optimizer's groups only for the step, so the state is
    read in insertion order (the group order of the first step, and of ``load_state_dict``).
    """
    inner = optimizer.optimizer.optimizer  # fabric wrapper -> DeepSpeed's ZeRO optimizer -> torch's Adam
    flat: dict[str, torch.Tensor] = {}
    for index, state in enumerate(inner.state.values()):
        for key, value in state.items():
            flat[f"{index}.{key}"] = torch.as_tensor(value).detach().float().clone()
    return flat


# ----------------------------------------------------------------------------- sections
def parity(ddp: Fabric) -> dict[str, Any]:
    """fp32 ZeRO 1/2/3 vs DDP after 20 Adam steps of the same seeded script."""
    model, optimizer = setup_net(ddp, seed=0)
    train_steps(ddp, model, optimizer, STEPS, seed=7)
    reference = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    result: dict[str, Any] = {}
    for name in ("stage1", "stage2", "stage3"):
        fabric = make(STAGES[name])
        ds_model, ds_optimizer = setup_net(fabric, seed=0)
        train_steps(fabric, ds_model, ds_optimizer, STEPS, seed=7)
        weights = full_parameters(fabric, ds_model)
        result[name] = {
            "allclose": all_close(weights, reference, rtol=1e-5, atol=1e-6),
            "max_diff": max_diff(weights, reference),
            "stage": fabric.strategy.zero_stage,
            "engine": type(ds_model._forward_module).__name__,
        }
    result["changed"] = (
        max_diff(reference, {k: v.detach() for k, v in _seeded_net().state_dict().items()}) > 0
    )
    return result


def _seeded_net() -> nn.Module:
    torch.manual_seed(0)
    return Net()


def round_trips(out_dir: str) -> dict[str, Any]:
    """Save after 3 steps, load into a differently initialized engine: weights and optimizer state exact,
    and 2 further steps from both give identical weights (step counts and moments were restored)."""
    result: dict[str, Any] = {}
    for name, options in STAGES.items():
        fabric = make(options)
        path = os.path.join(out_dir, f"ckpt_{name}")
        model, optimizer = setup_net(fabric, seed=1)
        train_steps(fabric, model, optimizer, 3, seed=11)
        fabric.save(path, {"model": model, "optimizer": optimizer, "step": 3, "note": name})
        saved_weights = full_parameters(fabric, model)
        saved_optimizer = optimizer_state(optimizer)
        train_steps(fabric, model, optimizer, 2, seed=99)
        continued = full_parameters(fabric, model)

        restored_model, restored_optimizer = setup_net(fabric, seed=2)
        before = max_diff(full_parameters(fabric, restored_model), saved_weights)
        state = {"model": restored_model, "optimizer": restored_optimizer, "step": 0}
        remainder = fabric.load(path, state)
        loaded_weights = full_parameters(fabric, restored_model)
        loaded_optimizer = optimizer_state(restored_optimizer)
        train_steps(fabric, restored_model, restored_optimizer, 2, seed=99)
        result[name] = {
            "differed_before": before > 0,
            "weights_equal": equal(loaded_weights, saved_weights),
            "optimizer_equal": equal(loaded_optimizer, saved_optimizer),
            "optimizer_entries": len(saved_optimizer),
            "continued_equal": equal(full_parameters(fabric, restored_model), continued),
            "step": state["step"],
            "remainder": sorted(remainder),
            "files": sorted(os.listdir(path)) if fabric.is_global_zero else [],
            "no_temporaries": [n for n in os.listdir(out_dir) if n.startswith(f".ckpt_{name}")],
        }
        # Saving again over the same path replaces it whole.
        fabric.save(path, {"model": model, "optimizer": optimizer, "step": 5})
        again = {"model": restored_model, "optimizer": restored_optimizer, "step": 0}
        fabric.load(path, again)
        result[name]["overwrite_step"] = again["step"]
        result[name]["overwrite_weights_equal"] = equal(full_parameters(fabric, restored_model), continued)
    return result


def ddp_reference(ddp: Fabric, out_dir: str) -> dict[str, Any]:
    """DDP's model and Adam state after the steps behind ``round_trips``' last save of every stage (3 steps
    on seed 11, 2 on seed 99), for ``ds_one_process.py`` to compare a 1-process load of those checkpoints with."""
    torch.manual_seed(1)
    net = Net()
    adam = torch.optim.Adam(net.parameters(), lr=1e-2)
    model, optimizer = ddp.setup(net, adam)
    train_steps(ddp, model, optimizer, 3, seed=11)
    train_steps(ddp, model, optimizer, 2, seed=99)
    if ddp.is_global_zero:
        torch.save(
            {"model": net.state_dict(), "optimizer": adam.state_dict()}, os.path.join(out_dir, "ddp.pt")
        )
    ddp.barrier()
    return {"steps": int(adam.state_dict()["state"][0]["step"])}


def across_strategies(ddp: Fabric, out_dir: str) -> dict[str, Any]:
    """A DeepSpeed checkpoint loads into DDP through consolidation; a DDP file loads into ZeRO-3."""
    from fabric.strategies.deepspeed import consolidate_deepspeed

    result: dict[str, Any] = {}
    fabric = make(STAGES["stage3"])
    model, optimizer = setup_net(fabric, seed=3)
    train_steps(fabric, model, optimizer, 2, seed=5)
    directory = os.path.join(out_dir, "across_ds")
    fabric.save(directory, {"model": model, "optimizer": optimizer, "epoch": 4})
    expected = full_parameters(fabric, model)
    single = os.path.join(out_dir, "across_consolidated.pt")
    if fabric.is_global_zero:
        consolidate_deepspeed(directory, single)
    fabric.barrier()
    raw = torch.load(single, map_location="cpu", weights_only=True)
    result["consolidated_keys"] = sorted(k for k in raw if not k.startswith("__"))
    result["consolidated_equal"] = equal({k: v.float() for k, v in raw["model"].items()}, expected)

    whole = fabric.load(directory)  # no state: everything, with the weights merged into full tensors
    result["whole_keys"] = sorted(whole)
    result["whole_equal"] = equal({k: v.float() for k, v in whole["model"].items()}, expected)

    ddp_model, ddp_optimizer = setup_net(ddp, seed=4)
    state = {"model": ddp_model, "epoch": 0}
    ddp.load(single, state)
    result["into_ddp_equal"] = equal(
        {k: v.detach().clone() for k, v in ddp_model.module.state_dict().items()}, expected
    )
    result["into_ddp_epoch"] = state["epoch"]

    # A full single file written by DDP loads into a ZeRO-3 run (weights; optimizer refused clearly).
    train_steps(ddp, ddp_model, ddp_optimizer, 1, seed=8)
    ddp_file = os.path.join(out_dir, "across_ddp.pt")
    ddp.save(ddp_file, {"model": ddp_model, "epoch": 9})
    ddp_weights = {k: v.detach().clone() for k, v in ddp_model.module.state_dict().items()}
    for name in ("stage2", "stage3"):
        target = make(STAGES[name])
        target_model, target_optimizer = setup_net(target, seed=6)
        state = {"model": target_model, "epoch": 0}
        target.load(ddp_file, state)
        result[f"full_into_{name}_equal"] = equal(full_parameters(target, target_model), ddp_weights)
        result[f"full_into_{name}_epoch"] = state["epoch"]
        # training goes on from the loaded weights (the fp32 master copy was refreshed, not left stale)
        train_steps(target, target_model, target_optimizer, 1, seed=8)
        moved = max_diff(full_parameters(target, target_model), ddp_weights)
        result[f"full_into_{name}_moved_a_little"] = 0 < moved < 0.05
    result["full_optimizer_refused"] = attempt(
        lambda: target.load(ddp_file, {"model": target_model, "optimizer": target_optimizer})
    )
    return result


def precisions() -> dict[str, Any]:
    from deepspeed.accelerator import get_accelerator

    result: dict[str, Any] = {"fp16_supported": bool(get_accelerator().is_fp16_supported())}
    for precision in ("bf16-mixed", "16-mixed", "bf16-true"):
        if precision == "16-mixed" and not result["fp16_supported"]:
            result[precision] = attempt(lambda: make(STAGES["stage2"], precision="16-mixed"))
            continue
        fabric = make(STAGES["stage2"], precision=precision)
        model, optimizer = setup_net(fabric, seed=0, lr=1e-3)
        losses = train_steps(fabric, model, optimizer, 6, seed=21)
        engine = model._forward_module
        x, _ = data(seed=1, n=2)
        result[precision] = {
            "param_dtype": str(next(engine.module.parameters()).dtype),
            "output_dtype": str(model(x).dtype),
            "finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
            "fp16_enabled": bool(engine.fp16_enabled()),
            "bf16_enabled": bool(engine.bfloat16_enabled()),
            "loss_scale": float(getattr(engine.optimizer, "loss_scale", 0.0) or 0.0),
            "changed": max_diff(
                full_parameters(fabric, model), {k: v.float() for k, v in _seeded_net().state_dict().items()}
            )
            > 0,
        }
    return result


def stage3_init() -> dict[str, Any]:
    """init_module under stage 3 creates partitioned parameters holding the values of a normal seeded init."""
    fabric = make(STAGES["stage3"])
    torch.manual_seed(0)
    with fabric.init_module(empty_init=True):
        model = Net()
    partitioned = [hasattr(p, "ds_id") for p in model.parameters()]
    local_numel = sum(p.ds_tensor.numel() for p in model.parameters())
    full_numel = sum(p.ds_numel for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    initial = full_parameters(fabric, model)
    train_steps(fabric, model, optimizer, 2, seed=3)
    return {
        "partitioned": all(partitioned),
        "local_numel": local_numel,
        "full_numel": full_numel,
        "values_equal_normal_init": equal(
            initial, {k: v.float() for k, v in _seeded_net().state_dict().items()}
        ),
    }


def cpu_sizes() -> dict[str, Any]:
    """The ZeRO buffer sizes each engine ran with: fabric's CPU defaults, a changed argument, a user's config."""

    def sizes(arguments: dict[str, Any]) -> dict[str, int]:
        model, _ = setup_net(make(arguments), seed=0)
        engine = model._forward_module  # the engine read its config when it was built
        return {
            "reduce_bucket_size": engine.zero_reduce_bucket_size(),
            "sub_group_size": engine.zero_sub_group_size(),
            "stage3_prefetch_bucket_size": engine.zero_prefetch_bucket_size(),
            "stage3_max_live_parameters": engine.zero_max_live_parameters(),
            "stage3_max_reuse_distance": engine.zero_max_reuse_distance(),
        }

    return {
        "stage3": sizes({"stage": 3}),
        "stage3_changed_argument": sizes({"stage": 3, "reduce_bucket_size": 5_000_000}),
        "stage3_user_config": sizes({"config": {"zero_optimization": {"stage": 3}}}),
        "stage2": sizes({"stage": 2}),
    }


def errors() -> dict[str, Any]:
    fabric = make(STAGES["stage2"])
    model, optimizer = setup_net(fabric, seed=0)
    x, y = data(seed=0, n=4)
    result = {
        "clip_norm": attempt(lambda: fabric.clip_gradients(model, optimizer, max_norm=1.0)),
        "clip_value": attempt(lambda: fabric.clip_gradients(model, optimizer, clip_val=1.0)),
    }

    def no_sync() -> None:
        with fabric.no_backward_sync(model):
            fabric.backward(nn.functional.mse_loss(model(x), y))

    result["no_backward_sync"] = attempt(no_sync)
    net = Net()
    result["several_optimizers"] = attempt(
        lambda: fabric.setup(
            net, torch.optim.SGD(net.parameters(), lr=1), torch.optim.SGD(net.parameters(), lr=1)
        )
    )
    return result


def accumulation_and_clipping() -> dict[str, Any]:
    """gradient_accumulation_steps=2 in the config: backward/step on every micro-batch equals one step on
    the doubled batch; gradient_clipping in the config clips inside the engine's step."""
    config = {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 2, "gradient_clipping": 0.05}
    fabric = make({}, config=config)
    model, optimizer = setup_net(fabric, seed=0, lr=1e-1)
    one_step = make({}, config={"zero_optimization": {"stage": 2}, "gradient_clipping": 0.05})
    big, big_optimizer = setup_net(one_step, seed=0, lr=1e-1)
    x, y = data(seed=40 + fabric.global_rank, n=8)
    for part in (slice(0, 4), slice(4, 8)):
        fabric.backward(nn.functional.mse_loss(model(x[part]), y[part]))
        optimizer.step()
    one_step.backward(nn.functional.mse_loss(big(x), y))
    big_optimizer.step()
    engine = model._forward_module
    return {
        "global_steps": int(engine.global_steps),
        "max_diff": max_diff(full_parameters(fabric, model), full_parameters(one_step, big)),
        "clipping": float(engine.gradient_clipping()),
    }


def config_optimizer() -> dict[str, Any]:
    """The config names Adam with optimizer offload: DeepSpeed builds its CPU Adam (compiled on first use),
    which trains like a torch Adam under the same offload."""
    config = {
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}},
    }
    fabric = make({}, config=config)
    torch.manual_seed(0)
    model, optimizer = fabric.setup(Net())
    reference_fabric = make(STAGES["stage2_offload"])
    reference, reference_optimizer = setup_net(reference_fabric, seed=0)
    x, y = data(seed=3 + fabric.global_rank, n=8)
    losses = []
    for _ in range(5):
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        losses.append(float(loss.detach()))
        reference_fabric.backward(nn.functional.mse_loss(reference(x), y))
        reference_optimizer.step()
    weights, expected = full_parameters(fabric, model), full_parameters(reference_fabric, reference)
    return {
        "optimizer": type(optimizer.optimizer.optimizer).__name__,
        "reference_optimizer": type(reference_optimizer.optimizer.optimizer).__name__,
        "losses_decrease": losses[-1] < losses[0],
        "max_diff_to_torch_adam": max_diff(weights, expected),
    }


class NetWithMethods(Net):
    def generate(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x) * 2

    def training_step(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).sum()


def routing() -> dict[str, Any]:
    """A marked method and Lightning's ``training_step`` reach the model through the engine's forward (the
    strategy declares that it wraps the model), under ZeRO-3 where the engine's hooks gather parameters."""
    fabric = make(STAGES["stage3"])
    torch.manual_seed(0)
    net = NetWithMethods()
    model, _ = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    calls: list[int] = []
    model._forward_module.register_forward_pre_hook(lambda *_: calls.append(1))
    model.mark_forward_method("generate")
    x, _ = data(seed=5, n=4)
    generated = model.generate(x)
    after_generate = len(calls)
    step = model.training_step(x)
    after_step = len(calls)
    output = model(x)
    return {
        "engine_calls": [after_generate, after_step, len(calls)],
        "generate_equal": bool(torch.equal(generated, output * 2)),
        "step_equal": bool(torch.allclose(step, output.sum())),
        "redirect_undone": "forward" not in net.__dict__,
    }


def attempt(function: Callable[[], Any]) -> dict[str, Any]:
    try:
        function()
    except Exception as err:
        return {"raised": type(err).__name__, "message": str(err)}
    return {"raised": None, "message": ""}


def main(out_dir: str, sections: list[str]) -> None:
    ddp = make("ddp")
    available: dict[str, Callable[[], dict[str, Any]]] = {
        "parity": lambda: parity(ddp),
        "round_trips": lambda: round_trips(out_dir),
        "ddp_reference": lambda: ddp_reference(ddp, out_dir),
        "across": lambda: across_strategies(ddp, out_dir),
        "precisions": precisions,
        "stage3_init": stage3_init,
        "cpu_sizes": cpu_sizes,
        "errors": errors,
        "accumulation": accumulation_and_clipping,
        "config_optimizer": config_optimizer,
        "routing": routing,
    }
    results: dict[str, Any] = {}
    for name in sections or list(available):
        try:
            results[name] = available[name]()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    Path(out_dir, f"rank{ddp.global_rank}.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
