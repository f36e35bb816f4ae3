"""The Fabric facade on one process: set-up, wrappers, collectives, callbacks, logging, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric, seed_everything
from fabric.loggers import CSVLogger
from fabric.strategies import SingleDeviceStrategy
from fabric.wrappers import _FabricDataLoader, _FabricModule, _FabricOptimizer
from tests.helpers import regression_data, tiny_mlp


def test_defaults_on_a_cpu_machine() -> None:
    fabric = Fabric(accelerator="cpu")
    assert isinstance(fabric.strategy, SingleDeviceStrategy)
    assert fabric.device == torch.device("cpu")
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (0, 0, 0, 1)
    assert fabric.is_global_zero
    assert fabric.accelerator.name == "cpu"


def test_setup_returns_wrappers_that_behave_like_the_originals() -> None:
    fabric = Fabric(accelerator="cpu")
    module = tiny_mlp()
    module.custom_attribute = 7
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    model, opt = fabric.setup(module, optimizer)
    assert isinstance(model, _FabricModule) and isinstance(model, torch.nn.Module)
    assert isinstance(opt, _FabricOptimizer) and isinstance(opt, torch.optim.Optimizer)
    assert model.module is module and opt.optimizer is optimizer
    assert model.custom_attribute == 7
    model.custom_attribute = 8
    assert module.custom_attribute == 8
    assert list(model.state_dict()) == list(module.state_dict())
    assert opt.param_groups is optimizer.param_groups
    assert opt.state is optimizer.state
    # an LR scheduler built on the wrapper drives the user's optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = regression_data()
    fabric.backward(F.mse_loss(model(x), y))
    opt.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_setup_module_then_optimizers() -> None:
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup_module(tiny_mlp())
    optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(optimizer, _FabricOptimizer)
    first, second = fabric.setup_optimizers(
        torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.2)
    )
    assert first.param_groups[0]["lr"] == 0.1 and second.param_groups[0]["lr"] == 0.2


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f: f.setup("not a module"), TypeError, "expected a torch.nn.Module"),
        (
            lambda f: f.setup(f.setup(tiny_mlp())),
            ValueError,
            "A model should be passed only once to the `setup`",
        ),
        (lambda f: f.setup(tiny_mlp(), "opt"), TypeError, "expected a torch.optim.Optimizer"),
        (
            lambda f: f.setup(tiny_mlp(), torch.optim.SGD(tiny_mlp(1).parameters(), lr=1)),
            ValueError,
            r"none of the 4 parameter\(s\) of SGD belong to the model",
        ),
        (lambda f: f.setup_dataloaders(), ValueError, "`setup_dataloaders` requires at least one dataloader"),
        (lambda f: f.setup_dataloaders([1, 2]), TypeError, "expected torch.utils.data.DataLoader"),
        (lambda f: f.setup_optimizers(), ValueError, "at least one optimizer"),
        (lambda f: f.clip_gradients(tiny_mlp(), None), ValueError, "exactly one of"),
        (lambda f: f.all_reduce(torch.ones(1), reduce_op="prod"), ValueError, "reduce_op='prod'"),
        (lambda f: f.save("x", [1]), TypeError, "must be a dict"),
        (lambda f: f.no_backward_sync(tiny_mlp()).__enter__(), TypeError, "returned by `fabric.setup"),
    ],
)
def test_invalid_calls_fail_clearly(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(Fabric(accelerator="cpu"))


def test_launch_runs_function_with_fabric_and_returns_result() -> None:
    fabric = Fabric(accelerator="cpu")
    assert fabric.launch(lambda f, a, b=0: (f.world_size, a + b), 2, b=3) == (1, 5)
    with pytest.raises(RuntimeError, match="already called"):
        fabric.launch()


def test_setup_dataloaders_keeps_loader_on_cpu_and_counts_epochs() -> None:
    fabric = Fabric(accelerator="cpu")
    dataset = TensorDataset(torch.arange(10.0))
    loader = DataLoader(dataset, batch_size=4)
    wrapped = fabric.setup_dataloaders(loader)
    assert isinstance(wrapped, _FabricDataLoader)
    assert wrapped.dataloader is loader  # nothing to change on one process
    assert len(wrapped) == 3 and wrapped.batch_size == 4
    assert [b[0].tolist() for b in wrapped] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    a, b = fabric.setup_dataloaders(DataLoader(dataset), DataLoader(dataset))
    assert isinstance(a, _FabricDataLoader) and isinstance(b, _FabricDataLoader)


def test_single_process_collectives_have_lightning_shapes() -> None:
    fabric = Fabric(accelerator="cpu")
    t = torch.arange(6.0).view(2, 3)
    assert torch.equal(fabric.all_reduce(t), t)
    gathered = fabric.all_gather({"a": t, "b": [torch.tensor(1.0)]})
    assert gathered["a"].shape == (1, 2, 3) and gathered["b"][0].shape == (1,)
    assert fabric.broadcast({"x": 1}) == {"x": 1}
    fabric.barrier()
    order = []
    with fabric.rank_zero_first():
        order.append("body")
    assert order == ["body"]


def test_clip_gradients_by_norm_and_value() -> None:
    fabric = Fabric(accelerator="cpu")
    module = tiny_mlp()
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    x, y = regression_data()
    fabric.backward(F.mse_loss(model(x), y) * 1000)
    norm = fabric.clip_gradients(model, optimizer, max_norm=1.0)
    assert norm is not None and norm > 1.0
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(1.0, rel=1e-4)
    fabric.clip_gradients(model, optimizer, clip_val=0.01)
    assert max(p.grad.abs().max().item() for p in model.parameters()) <= 0.01 + 1e-9


def test_clip_gradients_unscales_fp16_gradients_first() -> None:
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    module = tiny_mlp()
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    x, y = regression_data()
    fabric.backward(F.mse_loss(model(x), y))
    reference = tiny_mlp()
    F.mse_loss(reference(x), y).backward()
    expected = torch.norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
    norm = fabric.clip_gradients(model, optimizer, max_norm=1e9)
    assert norm == pytest.approx(expected.item(), rel=1e-2)  # fp16 compute, unscaled norm
    optimizer.step()  # must not unscale twice


def test_no_backward_sync_is_a_no_op_on_one_device() -> None:
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup(tiny_mlp())
    x, _ = regression_data()
    with fabric.no_backward_sync(model):
        fabric.backward(model(x).sum())
    assert model.module[0].weight.grad is not None


def test_mark_forward_method_runs_under_the_precision() -> None:
    class WithGenerate(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def generate(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x) * 2

    fabric = Fabric(accelerator="cpu", precision="bf16-true")
    model = fabric.setup(WithGenerate())
    model.mark_forward_method("generate")
    out = model.generate(torch.randn(2, 4))  # float32 input converted to bf16, output back to float32
    assert out.dtype == torch.float32
    with pytest.raises(AttributeError, match="no method named 'missing'"):
        model.mark_forward_method("missing")


def test_init_module_places_and_casts() -> None:
    fabric = Fabric(accelerator="cpu", precision="bf16-true")
    with fabric.init_module():
        layer = torch.nn.Linear(3, 3)
    assert layer.weight.dtype == torch.bfloat16 and layer.weight.device.type == "cpu"


def test_init_module_empty_init_skips_random_initialization() -> None:
    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    with fabric.init_module(empty_init=True):
        empty = torch.nn.Linear(64, 64)
    torch.manual_seed(0)
    with fabric.init_module(empty_init=False):
        normal = torch.nn.Linear(64, 64)
    torch.manual_seed(0)
    reference = torch.nn.Linear(64, 64)
    assert torch.equal(normal.weight, reference.weight)
    assert not torch.equal(empty.weight, reference.weight)


def test_call_invokes_hooks_that_exist() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []

        def on_epoch_end(self, value: int) -> None:
            self.calls.append(("epoch", value))

    first, second = Recorder(), Recorder()
    fabric = Fabric(accelerator="cpu", callbacks=[first, second, object()])
    fabric.call("on_epoch_end", value=3)
    fabric.call("hook_nobody_has")
    assert first.calls == second.calls == [("epoch", 3)]


def test_log_writes_csv(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="run")
    fabric = Fabric(accelerator="cpu", loggers=logger)
    assert fabric.logger is logger
    fabric.log("loss", torch.tensor(0.5), step=0)
    fabric.log_dict({"loss": 0.25, "acc": torch.tensor(0.9)}, step=1)
    logger.finalize("success")
    lines = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "acc,loss,step"  # sorted by name, as Lightning's CSVLogger writes them
    assert lines[1] == ",0.5,0"
    assert lines[2].startswith("0.8999") and lines[2].endswith(",0.25,1")
    with pytest.raises(TypeError, match="must be a fabric.loggers.Logger"):
        Fabric(accelerator="cpu", loggers=[object()])
    with pytest.raises(RuntimeError, match="no logger"):
        _ = Fabric(accelerator="cpu").logger


def test_print_and_to_device(capsys: pytest.CaptureFixture[str]) -> None:
    fabric = Fabric(accelerator="cpu")
    fabric.print("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"
    moved = fabric.to_device({"a": torch.ones(1), "b": [torch.zeros(2)]})
    assert moved["a"].device.type == "cpu"
    module = tiny_mlp()
    assert fabric.to_device(module) is module


def test_seed_everything_makes_runs_repeat_and_seeds_workers() -> None:
    def draw() -> list[float]:
        return [torch.rand(1).item(), __import__("random").random()]

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    with pytest.raises(ValueError, match="must lie in"):
        seed_everything(-1)

    seed_everything(7, workers=True)
    fabric = Fabric(accelerator="cpu")
    loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, num_workers=2)
    wrapped = fabric.setup_dataloaders(loader)
    assert wrapped.dataloader.worker_init_fn is not None


def test_import_is_light() -> None:
    code = (
        "import sys; from fabric import Fabric; heavy = [m for m in ('torch._dynamo', 'deepspeed', 'torch_xla', 'tensorboard', "
        "'torch.distributed.fsdp', 'lightning', 'lightning_utilities') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_ddp_fabric_starts_without_torch_distributed_nn() -> None:
    """Every process of a run creates its Fabric before the rendezvous: the RPC machinery waits for its user."""
    code = (
        "import sys; from fabric import Fabric; Fabric(accelerator='cpu', strategy='ddp', devices=2); "
        "print('torch.distributed.nn' in sys.modules)"
    )
    env = {**os.environ, "LOCAL_RANK": "1"}  # as in a started process: constructing it starts nothing
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


def test_training_through_wrapped_loader_converges() -> None:
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    x, y = regression_data(256)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
    module = tiny_mlp()
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=1e-2))
    first = last = None
    for _ in range(10):
        for xb, yb in loader:
            loss = F.mse_loss(model(xb), yb)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            first = first if first is not None else loss.item()
            last = loss.item()
    assert last is not None and first is not None and last < 0.3 * first


def test_backward_of_a_number_says_what_it_needs() -> None:
    """Issue 19 #11: `fabric.backward(3.0)` was an AttributeError from deep inside the precision."""
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(
        TypeError, match=r"Fabric.backward\(tensor=3.0\): expected the loss as a torch.Tensor.*got float"
    ):
        fabric.backward(3.0)  # type: ignore[arg-type]
    model = fabric.setup(tiny_mlp())
    loss = model(torch.ones(2, 8)).sum()
    with pytest.raises(TypeError, match=r"not `loss.item\(\)`"):
        fabric.backward(loss.item())  # type: ignore[arg-type]
    fabric.backward(loss)  # the tensor itself still works


def _temperature_run(fabric_class: Any) -> list[torch.Tensor]:
    fabric = fabric_class(accelerator="cpu", devices=1)
    module = tiny_mlp(seed=4)
    temperature = torch.nn.Parameter(torch.tensor(2.0))
    model, optimizer = fabric.setup(module, torch.optim.Adam([*module.parameters(), temperature], lr=0.05))
    x, y = regression_data(16)
    for _ in range(3):
        fabric.backward(F.mse_loss(model(x) / temperature, y))
        optimizer.step()
        optimizer.zero_grad()
    return [temperature.detach().clone(), *(p.detach().clone() for p in module.parameters())]


def test_an_optimizer_may_update_a_parameter_outside_the_model_as_in_lightning() -> None:
    """Issue 19 #4: "1 parameter(s) of SGD do not belong to the model" for a learnable temperature;
    Lightning trains it. Same numbers as Lightning's on one device."""
    ours = _temperature_run(Fabric)
    assert float(ours[0]) != 2.0  # the temperature trained
    lightning = pytest.importorskip("lightning.fabric")
    theirs = _temperature_run(lightning.Fabric)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_sharding_strategies_refuse_a_parameter_outside_the_model_and_say_what_to_do() -> None:
    from fabric.strategies import FSDPStrategy, ModelParallelStrategy

    temperature = torch.nn.Parameter(torch.tensor(2.0))
    optimizer = torch.optim.SGD([temperature], lr=0.1)
    for strategy in (FSDPStrategy(), ModelParallelStrategy(parallelize_fn=lambda model, mesh: model)):
        with pytest.raises(
            ValueError,
            match=r"1 parameter\(s\) of SGD \(shapes \[\]\) are not in the model, and "
            + type(strategy).__name__
            + r" cannot train them.*`model.temperature = nn.Parameter",
        ):
            strategy.setup_extra_parameters([temperature], optimizer)
