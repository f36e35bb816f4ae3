"""Models, data and reporting shared by the FSDP and model-parallel scripts of this folder.

The scripts run as ``python SCRIPT.py OUT_DIR`` (rank 1 is started by fabric re-running the same
command), so they import this module by its folder, which Python puts first on ``sys.path``.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Block(nn.Module):
    """Linear -> LayerNorm -> tanh; a unit for the auto-wrap and activation-checkpointing policies."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.norm(self.linear(x)))


class Net(nn.Module):
    """Small, with an odd output size so that one parameter shards unevenly (3 rows + 2 rows)."""

    def __init__(self, width: int = 16, out: int = 5) -> None:
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.inp(x))))


class FeedForward(nn.Module):
    """Two linears for tensor parallelism: ``w1`` column-wise, ``w2`` row-wise."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(8, 16)
        self.w2 = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.relu(self.w1(x)))


class NoReset(nn.Module):
    """Holds a parameter but has no ``reset_parameters``: cannot be created on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


def data(seed: int, n: int, out: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    y = torch.randn(n, out, generator=generator) * 0.1 + x[:, :1]
    return x, y


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, whether it is a DTensor shard or a plain tensor."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """Whole parameters by state-dict name (the user's module inside fabric's wrapper, if wrapped)."""
    module = getattr(module, "module", module)
    return {
        name.replace("_checkpoint_wrapped_module.", ""): full(p).clone()
        for name, p in module.named_parameters()
    }


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over matching entries; ``inf`` when the keys or shapes differ."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def attempt(function: Callable[[], Any]) -> dict[str, Any]:
    """Run ``function`` and record what it raised (type and message), or that it raised nothing."""
    try:
        function()
    except Exception as err:
        return {"raised": type(err).__name__, "message": str(err)}
    return {"raised": None, "message": ""}


def report(out_dir: str, rank: int, results: dict[str, Any]) -> None:
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results, indent=1, default=str))


def run_sections(sections: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """Run each section, recording its result or its traceback; a failing section does not stop the rest.

    Sections must fail alike on every rank (or before any collective), otherwise the other rank would
    wait in a collective forever; the test's timeout is the backstop.
    """
    results: dict[str, Any] = {}
    for name, section in sections.items():
        try:
            results[name] = section()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    return results


def _state_names(module: nn.Module) -> dict[int, str]:
    module = getattr(module, "module", module)
    return {id(p): n.replace("_checkpoint_wrapped_module.", "") for n, p in module.named_parameters()}


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Whole parameters, Adam's ``exp_avg`` and ``step`` by parameter name: what a checkpoint must restore."""
    names = _state_names(model)
    return {
        "model": full_parameters(model),
        "exp_avg": {names[id(p)]: full(s["exp_avg"]).clone() for p, s in optimizer.state.items()},
        "step": {names[id(p)]: float(s["step"]) for p, s in optimizer.state.items()},
    }


def compare_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, expected: dict[str, Any]
) -> dict[str, Any]:
    """How far the restored model and optimizer are from ``expected`` (from :func:`training_state`)."""
    actual = training_state(model, optimizer)
    return {
        "model_diff": max_diff(actual["model"], expected["model"]),
        "exp_avg_diff": max_diff(actual["exp_avg"], expected["exp_avg"]),
        "steps_equal": actual["step"] == expected["step"],
        "steps": sorted(set(actual["step"].values())),
    }


def trained(fabric: Any, seed: int, steps: int = 3) -> tuple[Any, Any]:
    """A ``Net`` and Adam set up with ``fabric`` and trained a few steps (state worth checkpointing)."""
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    for step in range(steps):
        x, y = data(seed=100 + step, n=8)
        fabric.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def fresh(fabric: Any, seed: int = 999, cls: type[nn.Module] = Net) -> tuple[Any, Any]:
    """A differently initialized model and an Adam without state, set up with ``fabric``: load targets."""
    torch.manual_seed(seed)
    model = cls()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return fabric.setup(model, optimizer)


class NetPlus(Net):
    """``Net`` plus one layer that no checkpoint of a ``Net`` holds."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Linear(2, 2)


def section_errors(ranks: list[dict[str, Any]]) -> str:
    """The tracebacks of the sections that failed, on any rank (empty when none did): for a test's message."""
    return "\n".join(
        f"[rank {rank}: {name}]\n{part['error']}"
        for rank, result in enumerate(ranks)
        for name, part in result.items()
        if isinstance(part, dict) and "error" in part
    )
