"""Behaviour a Lightning Fabric script relies on (issue 13): each test pins one item."""

from __future__ import annotations

import copy
import os
import pickle
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from fabric import Fabric, seed_everything
from fabric.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision, TruePrecision
from fabric.strategies import SingleDeviceStrategy
from fabric.utilities.data import prepare_dataloader
from fabric.utilities.distributed_data import DistributedSamplerWrapper
from fabric.utilities.seed import pl_worker_init_function
from fabric.wrappers import _FabricDataLoader
from tests.helpers import WithMethods, regression_data, tiny_mlp


# ------------------------------------------------------------------------------------------ seeding
def test_seed_everything_is_static_with_lightning_defaults_and_variables() -> None:
    before = dict(os.environ)
    assert Fabric.seed_everything(7) == 7  # on the class, as in Lightning
    # Lightning's names and nothing else, as its test_fabric.py::test_seed_everything sees them
    assert set(os.environ.items()) - set(before.items()) == {
        ("PL_GLOBAL_SEED", "7"),
        ("PL_SEED_WORKERS", "1"),
    }
    assert os.environ["PL_SEED_WORKERS"] == "1"  # workers=True is the default of the method
    first = torch.rand(3)
    Fabric(accelerator="cpu").seed_everything(7, workers=False, verbose=False)
    assert torch.equal(torch.rand(3), first)
    assert os.environ["PL_SEED_WORKERS"] == "0"
    assert seed_everything(3) == 3 and os.environ["PL_SEED_WORKERS"] == "0"  # the function: False


def test_fabric_seed_variable_is_read_when_lightnings_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_GLOBAL_SEED", "5")
    assert seed_everything(verbose=False) == 5
    assert "PL_GLOBAL_SEED" in os.environ and os.environ["PL_GLOBAL_SEED"] == "5"
    seed_everything(9, verbose=False)
    assert seed_everything(verbose=False) == 9  # the latest seed wins over the stale fabric variable


def test_seed_messages_carry_lightnings_wording(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's test_seed.py matches these phrases; ours add the allowed range and the fix."""
    with pytest.warns(UserWarning, match="No seed found, seed set to 0"):
        seed_everything()
    with pytest.raises(
        ValueError, match=r"10000000000 is not in bounds; the seed must lie in \[0, 4294967295\]"
    ):
        seed_everything(10**10)
    monkeypatch.setenv("PL_GLOBAL_SEED", "invalid")
    with pytest.raises(
        ValueError, match="Invalid seed specified via PL_GLOBAL_SEED: 'invalid' is not an integer"
    ):
        seed_everything()


def test_seed_everything_reads_lightning_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    assert seed_everything() == 11
    with pytest.raises(ValueError, match="must lie in"):
        seed_everything(2**32)
    with pytest.raises(ValueError, match="must lie in"):
        Fabric.seed_everything(-1)


def test_pl_worker_init_function_matches_lightning() -> None:
    seed_module = pytest.importorskip("lightning.fabric.utilities.seed")
    drawn = []
    for function in (seed_module.pl_worker_init_function, pl_worker_init_function):
        torch.manual_seed(1234 + 3)
        function(3, rank=1)
        drawn.append((torch.rand(4), __import__("random").random(), __import__("numpy").random.rand()))
    assert torch.equal(drawn[0][0], drawn[1][0])
    assert drawn[0][1:] == drawn[1][1:]


# ------------------------------------------------------------------------------------- data order
def _sharded(seed: int, rank: int = 0) -> _FabricDataLoader:
    seed_everything(seed, verbose=False)
    loader = DataLoader(TensorDataset(torch.arange(20)), batch_size=2, shuffle=True)
    prepared = prepare_dataloader(loader, {"num_replicas": 2, "rank": rank}, global_rank=rank)
    return _FabricDataLoader(prepared, None, Fabric(accelerator="cpu").strategy)


def _reference_order(seed: int, epoch: int, rank: int = 0) -> list[int]:
    sampler = DistributedSampler(range(20), num_replicas=2, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_ddp_order_is_distributed_sampler_with_the_seed_and_epoch() -> None:
    loader = _sharded(seed=5, rank=1)
    assert loader.sampler.seed == 5
    for epoch in range(2):
        seen = [int(i) for (batch,) in loader for i in batch]
        assert seen == _reference_order(5, epoch, rank=1)


def test_break_still_advances_the_epoch() -> None:
    loader = _sharded(seed=9)
    for _ in loader:
        break
    seen = [int(i) for (batch,) in loader for i in batch]
    assert seen == _reference_order(9, epoch=1)
    assert loader.state_dict()["epoch"] == 2


class _EveryOther(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        return iter(torch.randperm(self.n).tolist())


def test_custom_sampler_order_comes_from_the_seed() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        wrapper = DistributedSamplerWrapper(_EveryOther(16), num_replicas=2, rank=0, seed=seed)
        wrapper.set_epoch(epoch)
        return list(wrapper)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(2, 0)
    assert order(1, 0) != order(1, 1)
    seed_everything(4, verbose=False)
    loader = DataLoader(TensorDataset(torch.arange(16)), sampler=_EveryOther(16), batch_size=2)
    prepared = prepare_dataloader(loader, {"num_replicas": 2, "rank": 0}, global_rank=0)
    assert prepared.sampler.seed == 4


class MyLoader(DataLoader):
    def __init__(self, dataset: Any, extra: int) -> None:
        super().__init__(dataset, batch_size=2, num_workers=1)
        self.extra = extra


def test_set_up_dataloader_copies_and_pickles_and_subclasses_are_accepted() -> None:
    Fabric.seed_everything(0, verbose=False)  # workers=True: the loader needs a worker_init_fn
    fabric = Fabric(accelerator="cpu")
    user_loader = MyLoader(TensorDataset(torch.arange(6.0)), extra=3)
    loader = fabric.setup_dataloaders(user_loader)
    assert isinstance(loader.dataloader, MyLoader) and loader.extra == 3
    assert loader.dataloader.worker_init_fn is not None and user_loader.worker_init_fn is None
    clone = copy.copy(loader)
    assert len(clone) == 3
    restored = pickle.loads(pickle.dumps(loader))
    assert [b[0].tolist() for b in restored] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


# -------------------------------------------------------------------------------------- precision
class _MakesTensors(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = torch.ones(4)  # created inside forward: must take the precision's dtype
        return self.linear(x + offset)


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("16-true", torch.float16), ("bf16-true", torch.bfloat16), ("64-true", torch.float64)],
)
def test_true_precisions_switch_the_default_dtype_in_forward(precision: str, dtype: torch.dtype) -> None:
    fabric = Fabric(accelerator="cpu", precision=precision)
    model = fabric.setup(_MakesTensors())
    assert model(torch.randn(2, 4)).dtype == torch.float32
    with fabric.autocast():
        assert torch.get_default_dtype() == dtype
        assert torch.zeros(1).dtype == dtype
    assert torch.get_default_dtype() == torch.float32


def test_double_precision_keeps_complex_buffers() -> None:
    module = nn.Linear(2, 2)
    module.register_buffer("phase", torch.tensor([1 + 2j], dtype=torch.complex64))
    model = Fabric(accelerator="cpu", precision="64-true").setup(module)
    assert model.phase.dtype == torch.complex64 and model.phase.imag.item() == 2.0
    assert model.weight.dtype == torch.float64


def test_lightning_precision_names() -> None:
    assert DoublePrecision().precision == "64-true"
    assert HalfPrecision("bf16-true").precision == "bf16-true"
    assert isinstance(HalfPrecision(), TruePrecision) and issubclass(TruePrecision, Precision)
    assert MixedPrecision("bf16-mixed", device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="HalfPrecision"):
        HalfPrecision("64-true")


def test_fp16_mixed_two_optimizers_after_overflow_apply_the_true_gradient() -> None:
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    holder = nn.Module()
    holder.a, holder.b = a, b
    model, opt_a, opt_b = fabric.setup(holder, torch.optim.SGD([a], lr=1.0), torch.optim.SGD([b], lr=1.0))
    scale = fabric.strategy.precision.scaler.get_scale()
    loss = (model.a * float("inf")).sum() + model.b.sum()  # a's gradient overflows, b's is 1
    fabric.backward(loss)
    opt_a.step()
    opt_b.step()
    assert model.a.item() == 0.0  # skipped
    assert model.b.item() == -1.0  # the true gradient, not 2x (a scale lowered in between)
    fabric.backward(model.b.sum())  # the next iteration: the scale is lowered once
    assert fabric.strategy.precision.scaler.get_scale() == scale / 2


def test_fp16_mixed_clip_gradients_lets_an_overflowed_step_be_skipped() -> None:
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    model = tiny_mlp()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    fabric.backward(model(torch.randn(4, 8)).sum() * float("inf"))
    fabric.clip_gradients(model, optimizer, max_norm=1.0)  # no raise
    optimizer.step()
    assert all(torch.equal(x, y) for x, y in zip(before, model.parameters(), strict=True))


def test_plain_backward_under_mixed_precision_is_caught() -> None:
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    model = tiny_mlp()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = regression_data(8)
    F.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="fabric.backward"):
        optimizer.step()
    fabric.backward(F.mse_loss(model(x), y))
    optimizer.step()  # fine once fabric.backward is used
    # Lightning refuses it too, under bf16-mixed (which scales nothing): the same observable behaviour
    lightning = pytest.importorskip("lightning.fabric")
    theirs = lightning.Fabric(accelerator="cpu", devices=1, precision="bf16-mixed")
    their_module = tiny_mlp()
    their_model, _ = theirs.setup(their_module, torch.optim.SGD(their_module.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="fabric.backward"):
        F.mse_loss(their_model(x), y).backward()


# ---------------------------------------------------------------------------------------- wrappers
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", "64-true"])
def test_deepcopy_of_a_set_up_model_computes_with_its_own_weights(precision: str) -> None:
    fabric = Fabric(accelerator="cpu", precision=precision)
    model = fabric.setup(tiny_mlp())
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.zero_()
    x = torch.randn(3, 8)
    assert torch.count_nonzero(clone(x)) == 0
    assert torch.count_nonzero(model(x)) > 0
    assert clone._strategy is model._strategy  # the run's parts are shared


def test_module_wrapper_training_device_dtype() -> None:
    model = Fabric(accelerator="cpu", precision="bf16-true").setup(tiny_mlp())
    model.eval()
    assert model.training is False and model.module.training is False
    model.train()
    assert model.training is True
    assert model.device == torch.device("cpu")
    assert model.dtype == torch.bfloat16


class _PassThrough(nn.Module):
    """Stands for DDP: calls the wrapped module, which runs the module's `forward`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.module(*args, **kwargs)


class _PassThroughStrategy(SingleDeviceStrategy):
    """Wraps the model as DDP does (``module_wrapping = "wrapper"``), without a process group."""

    module_wrapping = "wrapper"

    def setup_module(self, module: nn.Module) -> nn.Module:
        return _PassThrough(module)


def test_marked_and_step_methods_go_through_the_strategy_wrapper() -> None:
    fabric = Fabric(accelerator="cpu", strategy=_PassThroughStrategy())
    original = WithMethods()
    model = fabric.setup_module(original)
    outer = model._forward_module
    model.mark_forward_method("generate")
    x = torch.randn(2, 4)
    assert torch.equal(model.generate(x), original.linear(original.linear(x)))  # no RecursionError
    assert model.training_step(x).item() == pytest.approx(original.linear(x).sum().item())
    assert outer.calls == 2  # both went through the wrapper's forward
    assert "forward" not in original.__dict__  # the redirection is undone


def test_setup_links_a_lightning_style_module_to_the_fabric() -> None:
    fabric = Fabric(accelerator="cpu")
    module = WithMethods()
    _, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    assert module._fabric is fabric and module._fabric_optimizers == [optimizer]


def test_optimizer_wrapper_isinstance_zero_grad_and_callbacks() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[Any] = []

        def on_after_optimizer_step(self, strategy: Any, optimizer: Any) -> None:
            self.calls.append(optimizer)

    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", callbacks=[recorder])
    module = tiny_mlp()
    adamw = torch.optim.AdamW(module.parameters())
    model, optimizer = fabric.setup(module, adamw)
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(optimizer, torch.optim.Optimizer)
    other = tiny_mlp()
    assert type(optimizer) is type(fabric.setup(other, torch.optim.AdamW(other.parameters()))[1])  # made once
    fabric.backward(model(torch.randn(2, 8)).sum())
    optimizer.step()
    assert recorder.calls == [adamw]
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters())
    clone = copy.deepcopy(optimizer)
    assert isinstance(clone, torch.optim.AdamW) and clone.optimizer is not adamw


# ------------------------------------------------------------------------------------ the facade
def test_call_passes_only_the_arguments_a_hook_accepts() -> None:
    class Narrow:
        def __init__(self) -> None:
            self.got: Any = None

        def on_epoch_end(self, loss: float) -> None:
            self.got = loss

    class Wide:
        def __init__(self) -> None:
            self.got: Any = None

        def on_epoch_end(self, **kwargs: Any) -> None:
            self.got = kwargs

    narrow, wide = Narrow(), Wide()
    Fabric(accelerator="cpu", callbacks=[narrow, wide]).call("on_epoch_end", loss=1.5, epoch=2)
    assert narrow.got == 1.5 and wide.got == {"loss": 1.5, "epoch": 2}


def test_loggers_may_be_any_object_with_the_logger_interface() -> None:
    class DuckLogger:
        def __init__(self) -> None:
            self.metrics: list[Any] = []

        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            self.metrics.append((metrics, step))

        def log_hyperparams(self, params: Any) -> None: ...

        def save(self) -> None: ...

        def finalize(self, status: str) -> None: ...

    duck = DuckLogger()
    fabric = Fabric(accelerator="cpu", loggers=duck)
    fabric.log("loss", torch.tensor(2.0), step=1)
    assert duck.metrics == [({"loss": 2.0}, 1)]
    with pytest.raises(TypeError, match="log_hyperparams"):
        Fabric(accelerator="cpu", loggers=[object()])


def test_collectives_take_numbers_groups_and_reduce_ops() -> None:
    fabric = Fabric(accelerator="cpu")
    gathered = fabric.all_gather(3.0)
    assert isinstance(gathered, torch.Tensor) and gathered.tolist() == [3.0]
    assert fabric.all_gather({"n": 2})["n"].dtype == torch.int32
    reduced = fabric.all_reduce(torch.tensor([1.0, 2.0]), reduce_op=torch.distributed.ReduceOp.SUM)
    assert reduced.tolist() == [1.0, 2.0]
    assert fabric.all_reduce(4, group=None, reduce_op="avg").item() == 4
    assert fabric.all_gather(torch.ones(2), group=None, sync_grads=True).shape == (1, 2)
    with pytest.raises(ValueError, match="reduce_op"):
        fabric.all_reduce(torch.ones(1), reduce_op="median")
    with pytest.raises(TypeError, match="process group"):
        fabric.all_reduce(torch.ones(1), "sum")


def test_public_names_lightning_scripts_import() -> None:
    import fabric
    from fabric.utilities import (
        AttributeDict,
        move_data_to_device,
        rank_zero_info,
        rank_zero_only,
        rank_zero_warn,
        suggested_max_num_workers,
    )
    from fabric.utilities.types import Optimizable

    assert fabric.is_wrapped(Fabric(accelerator="cpu").setup(tiny_mlp()))
    assert suggested_max_num_workers(1) >= 1
    hparams = AttributeDict(lr=0.1)
    hparams.epochs = 3
    assert hparams == {"lr": 0.1, "epochs": 3}
    assert move_data_to_device([torch.ones(1)], "cpu")[0].device.type == "cpu"
    assert rank_zero_only(lambda: 5)() == 5
    assert callable(rank_zero_info) and callable(rank_zero_warn)
    assert isinstance(torch.optim.SGD(tiny_mlp().parameters(), lr=0.1), Optimizable)
