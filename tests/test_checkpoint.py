"""Fabric.save / Fabric.load / Fabric.load_raw on one process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fabric import Fabric
from fabric.checkpoint import CheckpointError
from tests.helpers import parameters_equal, regression_data, tiny_mlp


def _trained(fabric: Fabric, steps: int = 3, seed: int = 0) -> tuple[Any, Any, Any]:
    module = tiny_mlp(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    model, optimizer = fabric.setup(module, optimizer)
    x, y = regression_data()
    for _ in range(steps):
        fabric.backward(F.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return model, optimizer, scheduler


def _optimizer_states_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    for key in a["state"]:
        for name, value in a["state"][key].items():
            other = b["state"][key][name]
            if isinstance(value, torch.Tensor):
                if not torch.equal(value, other):
                    return False
            elif value != other:
                return False
    return True


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_round_trip_of_everything(tmp_path: Path, precision: str) -> None:
    fabric = Fabric(accelerator="cpu", precision=precision)
    model, optimizer, scheduler = _trained(fabric)
    path = tmp_path / "ckpt.pt"
    fabric.save(
        path, {"model": model, "optimizer": optimizer, "scheduler": scheduler, "step": 3, "name": "run"}
    )

    other = Fabric(accelerator="cpu", precision=precision)
    model2, optimizer2, scheduler2 = _trained(other, steps=1, seed=5)
    assert not parameters_equal(model.module, model2.module)
    state = {"model": model2, "optimizer": optimizer2, "scheduler": scheduler2, "step": 0, "name": ""}
    remainder = other.load(path, state)
    assert remainder == {}
    assert parameters_equal(model.module, model2.module)
    assert _optimizer_states_equal(optimizer.state_dict(), optimizer2.state_dict())
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert state["step"] == 3 and state["name"] == "run"
    # the restored objects are the user's own: the wrappers still hold them
    assert state["model"] is model2 and state["optimizer"] is optimizer2


def test_load_without_state_returns_everything(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    model, _optimizer, _ = _trained(fabric)
    fabric.save(tmp_path / "c.pt", {"model": model, "step": 9})
    checkpoint = fabric.load(tmp_path / "c.pt")
    assert checkpoint["step"] == 9
    assert set(checkpoint["model"]) == set(model.state_dict())


def test_strict_and_non_strict(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    model, optimizer, _ = _trained(fabric)
    fabric.save(tmp_path / "c.pt", {"model": model, "extra": [1, 2]})
    with pytest.raises(KeyError, match=r"no entry for \['optimizer'\]"):
        fabric.load(tmp_path / "c.pt", {"model": model, "optimizer": optimizer})
    remainder = fabric.load(tmp_path / "c.pt", {"model": model, "optimizer": optimizer}, strict=False)
    assert remainder == {"extra": [1, 2]}

    # strict also applies to the model's keys
    bigger = fabric.setup(torch.nn.Sequential(*tiny_mlp(), torch.nn.Linear(2, 2)))
    with pytest.raises(RuntimeError, match="Missing key"):
        fabric.load(tmp_path / "c.pt", {"model": bigger})
    fabric.load(tmp_path / "c.pt", {"model": bigger}, strict=False)
    assert torch.equal(bigger.module[0].weight, model.module[0].weight)


def test_filter_keeps_only_selected_entries(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    model, _, _ = _trained(fabric)
    fabric.save(tmp_path / "c.pt", {"model": model, "step": 1}, filter={"model": lambda k, v: "weight" in k})
    checkpoint = fabric.load(tmp_path / "c.pt")
    assert set(checkpoint["model"]) == {"0.weight", "2.weight"}
    with pytest.raises(KeyError, match="not keys of `state`"):
        fabric.save(tmp_path / "d.pt", {"model": model}, filter={"optimizer": lambda k, v: True})
    assert not (tmp_path / "d.pt").exists()


def test_load_raw_reads_plain_torch_files(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    source = tiny_mlp(3)
    source_optimizer = torch.optim.SGD(source.parameters(), lr=0.5, momentum=0.9)
    source(torch.randn(2, 8)).sum().backward()
    source_optimizer.step()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.save(source_optimizer.state_dict(), tmp_path / "optimizer.pt")

    module = tiny_mlp(4)
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9))
    fabric.load_raw(tmp_path / "model.pt", model)
    fabric.load_raw(tmp_path / "optimizer.pt", optimizer)
    assert parameters_equal(source, module)
    assert optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(TypeError, match="must be a module or an optimizer"):
        fabric.load_raw(tmp_path / "model.pt", {"a": 1})  # type: ignore[arg-type]


def test_load_refuses_non_dict_and_wrong_state(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    torch.save(torch.ones(2), tmp_path / "tensor.pt")
    with pytest.raises(TypeError, match="use `Fabric.load_raw`"):
        fabric.load(tmp_path / "tensor.pt", {"x": 1})


def test_load_into_a_module_or_optimizer_reads_a_plain_state_dict_as_lightning(tmp_path: Path) -> None:
    """Lightning's ``fabric.load(path, model)`` loads the file as the model's state dict and returns {}."""
    fabric = Fabric(accelerator="cpu")
    source = tiny_mlp(4)
    source_optimizer = torch.optim.SGD(source.parameters(), lr=0.5)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.save(source_optimizer.state_dict(), tmp_path / "optimizer.pt")
    module = tiny_mlp(5)  # another seed: other weights
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    assert not parameters_equal(source, module)
    assert fabric.load(tmp_path / "model.pt", model) == {}
    assert parameters_equal(source, module)
    assert fabric.load(tmp_path / "optimizer.pt", optimizer) == {}
    assert optimizer.param_groups[0]["lr"] == 0.5
    (tmp_path / "folder").mkdir()
    with pytest.raises(
        ValueError, match="The given path must be a single file containing the full state dict"
    ):
        fabric.load(tmp_path / "folder", model)


def test_corrupt_file_gives_clear_error(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    model, _, _ = _trained(fabric)
    path = tmp_path / "c.pt"
    fabric.save(path, {"model": model})
    data = bytearray(path.read_bytes())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        fabric.load(path, {"model": model})


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    class Exploding:
        def state_dict(self) -> dict[str, Any]:
            raise RuntimeError("boom")

        def load_state_dict(self, state: dict[str, Any]) -> None: ...

    class BadPickle:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle")

    fabric = Fabric(accelerator="cpu")
    model, _optimizer, _ = _trained(fabric)
    path = tmp_path / "c.pt"
    fabric.save(path, {"model": model, "step": 1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        fabric.save(path, {"model": model, "thing": Exploding()})
    with pytest.raises(RuntimeError, match="cannot pickle"):
        fabric.save(path, {"model": model, "thing": BadPickle()})
    assert path.read_bytes() == before
    assert fabric.load(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


def test_unsafe_checkpoint_is_refused_by_default(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> Any:
            return (os.mkdir, (str(marker),))

    torch.save({"model": {}, "payload": Payload()}, tmp_path / "evil.pt")
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(CheckpointError, match="weights_only"):
        fabric.load(tmp_path / "evil.pt")
    assert not marker.exists()
    fabric.load(tmp_path / "evil.pt", weights_only=False)  # explicit opt-in for a trusted file
    assert marker.exists()


@pytest.mark.parametrize(
    ("saved_from", "loaded_into", "match"),
    [
        (
            lambda p: torch.optim.Adam(p),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            r"saved from another kind of optimizer than this SGD: its parameter groups have \[.*'betas'.*\] and "
            r"lack \['dampening', 'momentum', 'nesterov'\]",
        ),
        (
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            lambda p: torch.optim.Adam(p),
            r"than this Adam: its parameter groups have \['dampening', 'momentum', 'nesterov'\]",
        ),
    ],
)
def test_an_optimizer_state_of_another_kind_is_refused_before_anything_loads(
    tmp_path: Path, saved_from: Any, loaded_into: Any, match: str
) -> None:
    """Issue 19 #11: an Adam state loaded into SGD silently; SGD's `step()` then raised KeyError 'momentum'."""
    fabric = Fabric(accelerator="cpu")
    x, y = regression_data(8)
    module = tiny_mlp(seed=1)
    model, optimizer = fabric.setup(module, saved_from(module.parameters()))
    fabric.backward(F.mse_loss(model(x), y))
    optimizer.step()
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "step": 1})

    other = tiny_mlp(seed=2)
    other_model, other_optimizer = fabric.setup(other, loaded_into(other.parameters()))
    weights = [p.detach().clone() for p in other.parameters()]
    groups = [dict(g, params=None) for g in other_optimizer.param_groups]
    state = {"model": other_model, "optimizer": other_optimizer, "step": 0}
    with pytest.raises(ValueError, match=match):
        fabric.load(tmp_path / "ckpt", state)
    # nothing changed: not the model (listed before the optimizer), not the optimizer, not the values
    assert all(torch.equal(a, b) for a, b in zip(weights, other.parameters()))
    assert [dict(g, params=None) for g in other_optimizer.param_groups] == groups
    assert state["step"] == 0
    fabric.backward(F.mse_loss(other_model(x), y))
    other_optimizer.step()  # still the optimizer it was


def test_an_optimizer_state_of_the_same_kind_with_other_settings_loads(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    module = tiny_mlp(seed=1)
    _, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=0.01))
    fabric.save(tmp_path / "ckpt", {"optimizer": optimizer})
    other = tiny_mlp(seed=2)
    _, other_optimizer = fabric.setup(other, torch.optim.AdamW(other.parameters(), lr=0.5, amsgrad=True))
    fabric.load(tmp_path / "ckpt", {"optimizer": other_optimizer})
    assert other_optimizer.param_groups[0]["lr"] == 0.01


@pytest.mark.timeout(120)
def test_fsdp_refuses_an_optimizer_state_of_another_kind_and_parameters_outside_the_model(
    tmp_path: Path,
) -> None:
    """The optimizer-kind check reads the sharded layout's metadata, before any shard is read."""
    from tests.strategies.multiprocess import REPO_ROOT, run_python

    script = REPO_ROOT / "tests" / "checkpoint" / "scripts" / "fsdp_refusals.py"
    run = run_python([str(script), str(tmp_path / "ckpt")], timeout=110)
    assert run.returncode == 0, run.output
    results = [line for line in run.output.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2, run.output
    assert results[0].startswith("RESULT ValueError: Fabric.load("), run.output
    assert "another kind of optimizer than this SGD" in results[0]
    # issue 19 #4, through Fabric.setup: FSDP says why it cannot train a parameter outside the model
    assert results[1].startswith("RESULT ValueError: Fabric.setup(): 1 parameter(s) of SGD (shapes [])"), (
        run.output
    )
    assert "FSDPStrategy cannot train them" in results[1] and "model.temperature = nn.Parameter" in results[1]


def test_directory_without_shards_is_a_value_error_as_in_lightning(tmp_path: Path) -> None:
    """Lightning's FSDP ``load_checkpoint`` raises ``ValueError`` "does not point to a valid checkpoint" here."""
    from fabric.checkpoint.io import CheckpointError

    fabric = Fabric(accelerator="cpu")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="does not point to a valid checkpoint.*has no .metadata") as caught:
        fabric.load(tmp_path / "empty_dir", {"model": tiny_mlp()})
    assert isinstance(
        caught.value, CheckpointError
    )  # still ours: code catching CheckpointError keeps working
