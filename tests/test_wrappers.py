"""fabric.wrappers: how calls reach the model, what the optimizer wrapper knows from setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric import Fabric
from fabric.strategies import (
    DataParallelStrategy,
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleXLAStrategy,
    Strategy,
    XLAFSDPStrategy,
    XLAStrategy,
)
from tests.helpers import WithMethods
from tests.strategies.multiprocess import run_python


class _HooksInPlace(SingleDeviceStrategy):
    """Puts its work on the module itself, as FSDP2's ``fully_shard`` does: the same object comes back."""

    module_wrapping = "in_place"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def setup_module(self, module: nn.Module) -> nn.Module:
        def count(*_: Any) -> None:
            self.calls += 1

        module.register_forward_pre_hook(count)
        return module


def test_a_strategy_that_wraps_in_place_gets_marked_and_step_methods_through_its_hooks() -> None:
    # Only the declaration tells: the strategy returns the user's object, so no comparison could.
    strategy = _HooksInPlace()
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    original = WithMethods()
    model = fabric.setup_module(original)
    assert model._forward_module is original
    model.mark_forward_method("generate")
    x = torch.randn(2, 4)
    assert torch.equal(model.generate(x), original.linear(original.linear(x)))
    assert strategy.calls == 1  # the strategy's hook ran once, around the marked method
    assert model.training_step(x).item() == pytest.approx(original.linear(x).sum().item())
    assert strategy.calls == 3  # around the step method, and around its own call of `self(x)`
    assert "forward" not in original.__dict__  # the redirection is undone


def test_without_wrapping_a_marked_method_runs_under_the_precision_and_step_methods_run_directly() -> None:
    # Nothing wraps the model: the method is called directly (no module call, so no module hooks),
    # under the precision for a marked method (our difference from Lightning), as it is for a step method.
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    original = WithMethods()
    hooked: list[str] = []
    original.register_forward_pre_hook(lambda *_: hooked.append("forward"))
    model = fabric.setup_module(original)
    model.mark_forward_method("generate")
    x = torch.randn(2, 4)
    seen: list[torch.dtype] = []
    original.linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    out = model.generate(x)
    assert seen == [torch.bfloat16, torch.bfloat16] and out.dtype == torch.float32  # autocast, then cast back
    assert hooked == []
    assert model.training_step(x).dtype == torch.float32  # no autocast: Lightning's step method on one device
    assert seen[2:] == [torch.float32] and hooked == ["forward"]  # only its own call of `self(x)`


@pytest.mark.parametrize(
    ("strategy", "wrapping"),
    [
        (Strategy, "none"),
        (SingleDeviceStrategy, "none"),
        (SingleXLAStrategy, "none"),
        (XLAStrategy, "none"),
        (DDPStrategy, "wrapper"),
        (DataParallelStrategy, "wrapper"),
        (DeepSpeedStrategy, "wrapper"),
        (XLAFSDPStrategy, "wrapper"),
        (FSDPStrategy, "in_place"),
        (ModelParallelStrategy, "in_place"),
    ],
)
def test_each_strategy_declares_where_it_puts_its_work(strategy: type[Strategy], wrapping: str) -> None:
    assert strategy.module_wrapping == wrapping


_SHARDED_OPTIMIZER_ALONE = """
import sys
import torch
from fabric import Fabric

fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=1)
fabric.launch()
module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
model = fabric.setup_module(module)
optimizer = fabric.setup_optimizers(torch.optim.Adam(model.parameters(), lr=0.1))
fabric.backward(model(torch.ones(3, 4)).sum())
optimizer.step()
saved = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
fabric.save(sys.argv[1], {"optimizer": optimizer})  # sharded: keyed by the names of its model's parameters
fabric.backward(model(torch.ones(3, 4)).sum())
optimizer.step()
fabric.load(sys.argv[1], {"optimizer": optimizer})
loaded = optimizer.state_dict()["state"][0]
print("RESULT restored", all(torch.equal(saved[k], loaded[k]) for k in saved))
try:
    fabric.save(sys.argv[1] + "-plain", {"optimizer": optimizer.optimizer})
except KeyError as error:
    print("RESULT plain", "put the model in the same `state`" in str(error))
"""


@pytest.mark.timeout(150)
def test_a_sharded_save_and_load_of_an_optimizer_alone_uses_the_model_its_wrapper_got_at_setup(
    tmp_path: Path,
) -> None:
    # The wrapper is the record of its model (from `setup_optimizers` here); a plain optimizer without
    # its model in the state cannot be keyed by parameter names (Lightning requires the model too).
    run = run_python(["-c", _SHARDED_OPTIMIZER_ALONE, str(tmp_path / "ckpt")], timeout=120)
    assert run.returncode == 0, run.output
    results = [line for line in run.output.splitlines() if line.startswith("RESULT")]
    assert results == ["RESULT restored True", "RESULT plain True"], run.output


def test_hooks_on_the_wrapper_and_global_module_hooks_still_run_through_the_fast_call() -> None:
    # The wrapper's __call__ skips Module.__call__'s dispatch (three calls per step) only while no hook
    # could run there: a hook on the wrapper, a global module hook or compile() in place take the full path.
    fabric = Fabric(accelerator="cpu", devices=1, precision="bf16-mixed")
    model = fabric.setup_module(nn.Linear(4, 2))
    x = torch.randn(3, 4)
    plain = model(x)
    assert plain.dtype == torch.float32  # the precision's output conversion, on the fast path

    seen: list[str] = []
    handle = model.register_forward_pre_hook(lambda *_: seen.append("pre"))
    post = model.register_forward_hook(lambda _m, _i, out: seen.append(f"post {out.dtype}"))
    assert torch.equal(model(x), plain)
    assert seen == ["pre", "post torch.float32"]
    handle.remove()
    post.remove()

    seen.clear()
    global_handle = nn.modules.module.register_module_forward_hook(
        lambda module, _i, _o: seen.append(type(module).__name__)
    )
    try:
        model(x)
    finally:
        global_handle.remove()
    # the user's Linear and then the wrapper's own call ran the global (post-forward) hook
    assert seen == ["Linear", "_FabricModule"]

    seen.clear()
    model(x)
    assert seen == []  # every hook removed: the fast path again, and nothing left behind


def test_compile_in_place_of_the_wrapper_is_honoured() -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup_module(nn.Linear(4, 2))
    x = torch.randn(3, 4)
    expected = model(x)
    model.compile(backend="eager")  # as before the fast call: the attribute lands on the user's module
    torch._dynamo.reset()
    counters_before = dict(torch._dynamo.utils.counters["stats"])
    assert torch.allclose(model(x), expected)
    # dynamo saw the call: Module.__call__'s compiled path ran, not the fast one
    assert (
        torch._dynamo.utils.counters["stats"]["calls_captured"]
        >= counters_before.get("calls_captured", 0) + 1
    )


def test_optimizer_zero_grad_is_the_optimizers_own_and_clears_gradients() -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    module = nn.Linear(4, 2)
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(3, 4)).sum())
    assert module.weight.grad is not None
    optimizer.zero_grad(set_to_none=False)
    assert torch.count_nonzero(module.weight.grad) == 0
    optimizer.zero_grad()
    assert module.weight.grad is None
    copied = __import__("copy").deepcopy(optimizer)
    assert copied.zero_grad.__self__ is copied.optimizer  # a copy clears its own optimizer's gradients
