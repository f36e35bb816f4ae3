"""Small models and loops used by several tests."""

from __future__ import annotations

import torch
from torch import nn


def tiny_mlp(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 2))


def regression_data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    y = torch.stack([x.sum(1), x[:, 0] - x[:, 1]], dim=1)
    return x, y


class WithMethods(nn.Module):
    """A model with a method that runs it besides ``forward`` (``generate``) and Lightning's ``training_step``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self._fabric = None  # a Lightning module's link to its Fabric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.forward(x))

    def training_step(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).sum()


def parameters_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
