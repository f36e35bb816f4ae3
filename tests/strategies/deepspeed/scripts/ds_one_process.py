"""Load the DeepSpeed checkpoints ``ds_checks.py`` wrote into one process without DeepSpeed: model and Adam.

Started by ``tests/strategies/deepspeed/test_deepspeed.py`` as ``python ds_one_process.py OUT_DIR`` after
``ds_checks.py`` filled OUT_DIR: ``ckpt_<stage>`` (a 2-process ZeRO run, 5 Adam steps) and ``ddp.pt``
(the same 5 steps under DDP, with the torch Adam's own state). For every stage a plain 1-process Fabric
with a fresh model and a torch Adam loads the directory; the loaded weights and optimizer state are
compared with DDP's, and one further step from each (same batch) must give the same weights. Writes
``OUT_DIR/one_process.json``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.strategies.deepspeed.scripts.ds_checks import STAGES, Net, data, max_diff

# ZeRO against DDP: the reduction order differs (the same tolerance as the parity test).
RTOL, ATOL = 1e-5, 1e-6


def step(model: nn.Module, optimizer: torch.optim.Optimizer, backward: Any = None) -> None:
    x, y = data(seed=123, n=8)
    loss = nn.functional.mse_loss(model(x), y)
    if backward is None:
        loss.backward()
    else:
        backward(loss)
    optimizer.step()
    optimizer.zero_grad()


def moments(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``index.key -> tensor`` over an index-keyed torch optimizer state."""
    return {
        f"{index}.{key}": torch.as_tensor(value).float().clone()
        for index, entry in state["state"].items()
        for key, value in entry.items()
    }


def load_stage(out_dir: str, name: str, reference: dict[str, Any]) -> dict[str, Any]:
    from fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(2)  # another initialization than the saved run's
    net = Net()
    adam = torch.optim.Adam(net.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(net, adam)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(os.path.join(out_dir, f"ckpt_{name}"), state)
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    loaded = moments(adam.state_dict())
    expected = moments(reference["optimizer"])

    torch_net = Net()  # plain torch, from DDP's state: what the next step should give
    torch_net.load_state_dict(reference["model"])
    torch_adam = torch.optim.Adam(torch_net.parameters(), lr=1e-2)
    # a copy: load_state_dict keeps the given tensors, and the step below would change the reference
    torch_adam.load_state_dict(copy.deepcopy(reference["optimizer"]))
    step(model, optimizer, fabric.backward)
    step(torch_net, torch_adam)
    return {
        "step": state["step"],
        "weights_max_diff": max_diff(weights, reference["model"]),
        "weights_close": all(
            torch.allclose(weights[k], v, RTOL, ATOL) for k, v in reference["model"].items()
        ),
        "optimizer_keys_equal": sorted(loaded) == sorted(expected),
        "optimizer_entries": len(loaded),
        "optimizer_max_diff": max_diff(loaded, expected),
        "optimizer_close": loaded.keys() == expected.keys()
        and all(torch.allclose(loaded[k], expected[k], RTOL, ATOL) for k in expected),
        "adam_steps": sorted({float(entry["step"]) for entry in adam.state_dict()["state"].values()}),
        "next_step_max_diff": max_diff(
            {k: v.detach() for k, v in net.state_dict().items()},
            {k: v.detach() for k, v in torch_net.state_dict().items()},
        ),
    }


def refusal(out_dir: str) -> dict[str, Any]:
    """A ZeRO-2 directory that lost one rank's optimizer file: the merge refuses, saying what to do."""
    from fabric.checkpoint.deepspeed_format import TAG, full_optimizer_state

    broken = os.path.join(out_dir, "broken_tag")
    shutil.copytree(os.path.join(out_dir, "ckpt_stage2", TAG), broken)
    os.remove(os.path.join(broken, "zero_pp_rank_1_mp_rank_00_optim_states.pt"))
    try:
        full_optimizer_state(broken)
    except Exception as err:
        return {"raised": type(err).__name__, "message": str(err)}
    return {"raised": None, "message": ""}


def main(out_dir: str) -> None:
    reference = torch.load(os.path.join(out_dir, "ddp.pt"), weights_only=True)
    results: dict[str, Any] = {"refusal": refusal(out_dir)}
    for name in STAGES:
        try:
            results[name] = load_stage(out_dir, name, reference)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    Path(out_dir, "one_process.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
