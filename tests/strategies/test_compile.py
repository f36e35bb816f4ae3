"""``setup(..., _reapply_compile=)``: a compiled model is compiled again after the strategy wraps it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fabric import Fabric
from tests.helpers import WithMethods
from tests.strategies.multiprocess import SCRIPTS, read_rank_results, run_python

PLAIN_KEYS = ["0.bias", "0.weight", "2.bias", "2.weight"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


@pytest.mark.parametrize("reapply", [True, False])
def test_single_device_stays_compiled_with_plain_keys(tmp_path: Path, reapply: bool) -> None:
    model = _model()
    compiled = torch.compile(model, backend="eager")
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped = fabric.setup_module(compiled, _reapply_compile=reapply)
    assert type(wrapped._forward_module).__name__ == "OptimizedModule"
    x = torch.randn(3, 4)
    assert torch.equal(wrapped(x), model(x))
    if reapply:
        assert wrapped.module is model
        assert wrapped._forward_module is not compiled and wrapped._forward_module._orig_mod is model
        assert sorted(wrapped.state_dict()) == PLAIN_KEYS
    else:  # Lightning's semantics: the compiled module is used as it is
        assert wrapped._forward_module is compiled and wrapped.module is compiled
    fabric.save(tmp_path / "ckpt.pt", {"model": wrapped})
    assert sorted(torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]) == PLAIN_KEYS


def test_setup_with_optimizer_trains_the_users_parameters() -> None:
    model = _model()
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped, optimizer = fabric.setup(
        torch.compile(model, backend="eager"), torch.optim.SGD(model.parameters(), 0.1)
    )
    before = model[0].weight.detach().clone()
    fabric.backward(wrapped(torch.randn(3, 4)).sum())
    optimizer.step()
    assert not torch.equal(before, model[0].weight)


@pytest.mark.timeout(150)
def test_ddp_compiles_after_wrapping_and_saves_plain_keys(tmp_path: Path) -> None:
    run = run_python([str(SCRIPTS / "compile_ddp.py"), str(tmp_path)], timeout=140)
    assert run.returncode == 0, run.output
    for result in read_rank_results(tmp_path, world_size=2):
        assert result["forward_is_compiled"]
        assert result["compiled_wraps_ddp"]  # Lightning's order: compile(DDP(model))
        assert result["same_dynamo_context"]  # same backend and options as the user's compile
        assert result["ranks_identical"]
        assert result["state_dict_keys"] == PLAIN_KEYS
        assert result["checkpoint_keys"] == PLAIN_KEYS


def test_a_marked_method_goes_through_the_compiled_wrapper() -> None:
    # The facade's compile wrapper is reached as a strategy's wrapper is (Lightning routes it there too).
    module = WithMethods()
    wrapped = Fabric(accelerator="cpu", devices=1).setup_module(torch.compile(module, backend="eager"))
    calls: list[int] = []
    wrapped._forward_module.register_forward_pre_hook(lambda *_: calls.append(1))
    wrapped.mark_forward_method("generate")
    x = torch.randn(2, 4)
    assert torch.equal(wrapped.generate(x), module.linear(module.linear(x)))
    assert calls == [1] and "forward" not in module.__dict__
