"""FSDP set-up options Lightning users pass, and meta-device init of a GPT-like model, on 2 or 4 processes.

``python api_checks.py OUT_DIR basic`` (2 processes) or ``... OUT_DIR hybrid`` (4 processes, 2x2 mesh).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from common import attempt, data, full_parameters, max_diff, report, run_sections
from torch import nn

from fabric import Fabric
from fabric.strategies import FSDPStrategy


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(torch.relu(self.fc(self.norm(x))))


class GPT(nn.Module):
    """The usual layout: blocks in a ModuleList, its own `_init_weights` applied in `__init__`."""

    def __init__(self, width: int = 8, layers: int = 3, vocab: int = 37) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(layers))
        self.head = nn.Linear(width, vocab, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(5, 5)))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * layers) ** 0.5)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 5)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


def gpt_meta_init(fabric: Fabric) -> dict[str, Any]:
    torch.manual_seed(42)
    with fabric.init_module(empty_init=True):
        model = GPT()
    on_meta = all(p.is_meta for p in model.parameters())
    drawn_after = torch.rand(4)
    torch.manual_seed(42)
    reference = GPT()
    reference_drawn_after = torch.rand(4)
    model = fabric.setup_module(model)
    values = {**full_parameters(model), "mask": model.module.mask.clone()}
    expected = {**{n: p.detach() for n, p in reference.named_parameters()}, "mask": reference.mask}
    idx = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        output_diff = float((model(idx) - reference(idx)).abs().max())
    units = sum(1 for m in model.module.modules() if type(m).__name__.startswith("FSDP"))
    return {
        "on_meta": on_meta,
        "equal": values.keys() == expected.keys()
        and all(torch.equal(values[k], expected[k]) for k in values),
        "max_diff": max_diff(values, expected),
        "rng_after_equal": bool(torch.equal(drawn_after, reference_drawn_after)),
        "output_diff": output_diff,
        "units": units,
    }


def train(fabric: Fabric, steps: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    for step in range(steps):
        x, y = data(seed=100 + 10 * step + fabric.global_rank, n=6)
        fabric.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
    return full_parameters(model)


def strategies(ddp: Fabric, fabrics: dict[str, Fabric]) -> dict[str, Any]:
    expected = train(ddp)
    result: dict[str, Any] = {}
    for name, fabric in fabrics.items():
        result[name] = max_diff(train(fabric), expected)
    return result


def option_checks() -> dict[str, Any]:
    from torch.distributed.fsdp import MixedPrecision, ShardingStrategy

    grad_op = FSDPStrategy(sharding_strategy=ShardingStrategy.SHARD_GRAD_OP)
    mp = FSDPStrategy(mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    return {
        "grad_op_reshard": grad_op.reshard_after_forward,
        "full_reshard": FSDPStrategy().reshard_after_forward,
        "mp_param_dtype": str(mp._mp_policy.param_dtype),
        "bad_strategy": attempt(lambda: FSDPStrategy(sharding_strategy="HALF_SHARD")),
        "buffer_dtype": attempt(
            lambda: FSDPStrategy(mixed_precision=MixedPrecision(buffer_dtype=torch.float16))
        ),
        "fsdp1_only": attempt(lambda: FSDPStrategy(backward_prefetch=None)),
        "unknown_kwarg": attempt(lambda: FSDPStrategy(no_such_option=1)),
        "no_op_kwarg": attempt(lambda: FSDPStrategy(use_orig_params=True, limit_all_gathers=True)),
        "bad_mesh": attempt(lambda: FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(3,))),
    }


def main(out_dir: str, mode: str) -> None:
    def make(strategy: Any) -> Fabric:
        fabric = Fabric(accelerator="cpu", strategy=strategy, devices=4 if mode == "hybrid" else 2)
        fabric.launch()
        return fabric

    ddp = make("ddp")
    if mode == "hybrid":
        hybrid = make(FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 2)))
        sections = {
            "strategies": lambda: strategies(ddp, {"hybrid": hybrid}),
            "hybrid_mesh": lambda: {"shape": list(hybrid.strategy._mesh.shape), "gpt": gpt_meta_init(hybrid)},
        }
    else:
        fsdp = make("fsdp")
        sections = {
            "gpt": lambda: gpt_meta_init(fsdp),
            "strategies": lambda: strategies(
                ddp,
                {
                    "full_shard": fsdp,
                    "shard_grad_op": make(FSDPStrategy(sharding_strategy="SHARD_GRAD_OP")),
                    "no_shard": make(FSDPStrategy(sharding_strategy="NO_SHARD")),
                },
            ),
            "options": option_checks,
        }
    results = run_sections(sections)
    report(out_dir, ddp.global_rank, results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
