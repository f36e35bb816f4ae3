"""What moving and wrapping a model for XLA must keep; prints a JSON line for ``tests/xla/test_xla_modules.py``.

    python xla_modules.py STRATEGY DEVICES

The model has the three features that broke on XLA: an output head tied to its embedding and registered before
other layers (``Module.to("xla")`` untied the two, and the parameters after the tie then paired with the wrong
CPU originals), an output that is not a tensor (a dataclass holding ``loss`` and ``logits``, the shape of
``transformers``' ``ModelOutput``, which FSDPv2's default output sharding refused), and repeated blocks to
checkpoint (``activation_checkpointing_policy``). It trains 3 Adam steps with an optimizer made before
``setup`` twice, plain and with the blocks checkpointed, and the same model eagerly on the CPU. Then a variant
that initializes itself (as ``transformers``' ``_init_weights``) is created under ``init_module()`` and
``init_module(empty_init=True)``: both must give the eager CPU construction's weights exactly.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from fabric import Fabric

STEPS = 3


@dataclass
class Output:
    loss: torch.Tensor
    logits: torch.Tensor


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16, bias=False)  # registered before the blocks, tied below
        self.head.weight = self.embedding.weight
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, ids: torch.Tensor) -> Output:
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x)
        logits = self.head(x)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(1, dims=1).flatten())
        return Output(loss=loss, logits=logits)


class InitNet(TiedNet):
    """Initializes itself beyond the layers' defaults, as ``transformers`` models do in ``_init_weights``."""

    def __init__(self) -> None:
        super().__init__()
        nn.init.normal_(self.embedding.weight, std=0.02)
        for block in self.blocks:
            block.linear.bias.data.zero_()
            block.linear.weight.data.normal_(std=0.1)


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, 16, (4, 5), generator=torch.Generator().manual_seed(100 + step))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, fabric: Fabric | None) -> list[float]:
    losses = []
    for step in range(STEPS):
        ids = batch(step) if fabric is None else fabric.to_device(batch(step))
        if fabric is not None:
            ids = fabric.strategy.batch_to_device(ids)  # SPMD: shard the batch over the devices
        loss = model(ids).loss
        if fabric is None:
            loss.backward()
        else:
            fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def run(strategy_class: Any, devices: int, checkpointing: bool) -> dict[str, Any]:
    kwargs = {"activation_checkpointing_policy": {Block}} if checkpointing else {}
    # created (the XLA runtime started) before the CPU reference's backward: pytorch/xla#4174
    fabric = Fabric(accelerator="xla", devices=devices, strategy=strategy_class(**kwargs))
    fabric.launch()
    torch.manual_seed(0)
    reference_model = TiedNet()
    reference = train(reference_model, torch.optim.Adam(reference_model.parameters(), lr=1e-2), None)

    torch.manual_seed(0)
    model = TiedNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # before setup: holds the CPU parameters
    wrapped, optimizer = fabric.setup(model, optimizer)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    losses = train(wrapped, optimizer, fabric)
    return {
        "reference": reference,
        "losses": losses,
        "tied": model.head.weight is model.embedding.weight,
        "optimizer_holds_model_parameters": optimized == {id(p) for p in model.parameters()},
        "checkpointed_modules": sum(
            hasattr(m, "_xla_checkpointed_forward_original") for m in model.modules()
        ),
    }


def initial_weights(strategy_class: Any, devices: int) -> dict[str, Any]:
    """``init_module()`` and ``init_module(empty_init=True)``: the eager CPU construction's weights, and its
    training, with an optimizer made before ``setup`` (from the meta parameters, under ``empty_init``)."""
    fabric = Fabric(accelerator="xla", devices=devices, strategy=strategy_class())
    fabric.launch()  # before the CPU reference's backward: pytorch/xla#4174
    torch.manual_seed(0)
    reference_model = InitNet()
    initial = {name: tensor.clone() for name, tensor in reference_model.state_dict().items()}
    result: dict[str, Any] = {
        "reference": train(reference_model, torch.optim.Adam(reference_model.parameters(), lr=1e-2), None)
    }
    for empty_init in (False, True):
        torch.manual_seed(0)
        with fabric.init_module(empty_init=empty_init):
            model = InitNet()
        created_on = sorted({p.device.type for p in model.parameters()})
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        wrapped, optimizer = fabric.setup(model, optimizer)
        state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        result["empty_init" if empty_init else "eager"] = {
            "created_on": created_on,
            "max_diff_to_cpu": max(float((state[name] - initial[name]).abs().max()) for name in initial),
            "tied": model.head.weight is model.embedding.weight,
            "optimizer_holds_model_parameters": optimized == {id(p) for p in model.parameters()},
            "losses": train(wrapped, optimizer, fabric),
        }
    return result


def main(strategy_name: str, devices: int) -> None:
    from fabric.strategies.xla import XLAStrategy
    from fabric.strategies.xla_fsdp import XLAFSDPStrategy
    from fabric.strategies.xla_single import SingleXLAStrategy

    classes: dict[str, Any] = {
        "single_xla": SingleXLAStrategy,
        "xla": XLAStrategy,
        "xla_fsdp": XLAFSDPStrategy,
    }
    result: dict[str, Any] = {}
    for checkpointing in (False, True):
        try:
            part = run(classes[strategy_name], devices, checkpointing)
        except Exception:  # each part is reported on its own: one failure does not hide the other
            part = {"error": traceback.format_exc()}
        result["checkpointed" if checkpointing else "plain"] = part
    try:
        result["initial_weights"] = initial_weights(classes[strategy_name], devices)
    except Exception:
        result["initial_weights"] = {"error": traceback.format_exc()}
    # a model whose config asks for a key-value cache: a recomputed block would write it twice
    fabric = Fabric(
        accelerator="xla",
        devices=devices,
        strategy=classes[strategy_name](activation_checkpointing_policy={Block}),
    )
    fabric.launch()
    model = TiedNet()
    model.config = SimpleNamespace(use_cache=True)
    try:
        fabric.setup(model)
        result["cache_refused"] = ""
    except ValueError as err:
        result["cache_refused"] = str(err)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
