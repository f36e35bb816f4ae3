"""Asynchronous saves (``Fabric.save(..., async_save=True)``): the same checkpoint as a synchronous save,
holding the values at the call while training changes them, with errors that are never lost.

Real runs: ``scripts/async_save.py`` (two FSDP processes writing a sharded directory; two DDP
processes writing one file) and ``scripts/killed_async_save.py`` (a rank SIGKILLed mid-write). One
plain process: in this process. Every background write is held at a gate until the parameters have
changed, so that the checkpoint holding the values at the call is certain, not a matter of timing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fabric import Fabric
from fabric.checkpoint import CheckpointManager, TorchCheckpointIO
from fabric.checkpoint.background import AsyncSave, Staging, snapshot
from fabric.strategies import SingleDeviceStrategy
from tests.checkpoint.killing import KillDuringWrite
from tests.strategies.multiprocess import REPO_ROOT, read_rank_results, run_python

SCRIPTS = REPO_ROOT / "tests" / "checkpoint" / "scripts"


class _Gate:
    """Holds every background write until :meth:`open` (test instrumentation of the real thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.event = threading.Event()
        original = AsyncSave._run

        def gated(handle: AsyncSave, write: Any) -> None:
            assert self.event.wait(30), "the test never opened the gate"
            original(handle, write)

        monkeypatch.setattr(AsyncSave, "_run", gated)

    def open(self) -> None:
        self.event.set()


def _model_and_optimizer(fabric: Fabric) -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    _step(fabric, model, optimizer)
    return model, optimizer


def _step(fabric: Fabric, model: Any, optimizer: Any) -> None:
    fabric.backward(model(torch.randn(8, 32)).square().mean())
    optimizer.step()
    optimizer.zero_grad()


def _clone(tree: Any) -> Any:
    return snapshot(tree)


def _assert_equal(actual: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _assert_equal(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _assert_equal(a, e)
    else:
        assert actual == expected


# ------------------------------------------------------------------------------------- one process
@pytest.mark.timeout(60)
def test_one_process_holds_the_values_at_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate(monkeypatch)
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = _model_and_optimizer(fabric)
    history = [1, 2]
    state = {"model": model, "optimizer": optimizer, "step": 7, "history": history}
    fabric.save(tmp_path / "sync.pt", state)
    expected = torch.load(tmp_path / "sync.pt", weights_only=True)

    pending = fabric.save(tmp_path / "async.pt", state, async_save=True)
    assert isinstance(pending, AsyncSave)
    assert not pending.done()  # held at the gate: nothing written yet
    assert not (tmp_path / "async.pt").exists()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # training changes everything in place...
    _step(fabric, model, optimizer)
    history.append(3)
    gate.open()  # ...before the write starts
    _step(fabric, model, optimizer)

    # A load right after sees the new checkpoint (it waits for the write), with the values at the call.
    restored = fabric.load(tmp_path / "async.pt")
    assert pending.done()
    for key in ("model", "optimizer", "step", "history"):
        _assert_equal(restored[key], expected[key])
    assert restored["history"] == [1, 2]
    # The same content as the synchronous save, random state included.
    _assert_equal(torch.load(tmp_path / "async.pt", weights_only=True), expected)


@pytest.mark.timeout(60)
def test_one_process_next_save_waits_and_load_restores(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = _model_and_optimizer(fabric)
    expected = _clone(model.state_dict())
    first = fabric.save(tmp_path / "a.pt", {"model": model, "optimizer": optimizer}, async_save=True)
    second = fabric.save(tmp_path / "b.pt", {"model": model}, async_save=True)
    assert first is not None and first.done()  # the second save waited for the first
    assert second is not None
    second.wait()
    torch.manual_seed(5)
    target = fabric.setup(nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 4)))
    fabric.load(tmp_path / "a.pt", {"model": target}, strict=False)
    _assert_equal(target.state_dict(), expected)


class _FailingIO(TorchCheckpointIO):
    """Storage that fails like a full disk, once told to."""

    def __init__(self) -> None:
        self.fail = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if self.fail:
            raise OSError(28, f"No space left on device: '{path}'")
        super().save_checkpoint(checkpoint, path, storage_options)


@pytest.mark.timeout(60)
def test_an_error_in_the_background_is_raised_by_the_next_call(tmp_path: Path) -> None:
    io = _FailingIO()
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[io])
    model, _ = _model_and_optimizer(fabric)
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "tag": "old"})
    io.fail = True

    # ... by the next save (which then does not run)
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "tag": "new"}, async_save=True)
    io.fail = False
    with pytest.raises(OSError, match="No space left"):
        fabric.save(tmp_path / "other.pt", {"model": model})
    assert not (tmp_path / "other.pt").exists()
    assert fabric.load(tmp_path / "ckpt.pt")["tag"] == "old"  # the previous checkpoint is unchanged

    # ... by the next load
    io.fail = True
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "tag": "new"}, async_save=True)
    with pytest.raises(OSError, match="No space left"):
        fabric.load(tmp_path / "ckpt.pt")

    # ... by the handle, once; then the next call has nothing left to raise
    pending = fabric.save(tmp_path / "ckpt.pt", {"model": model, "tag": "new"}, async_save=True)
    assert pending is not None
    with pytest.raises(OSError, match="No space left"):
        pending.wait()
    fabric.wait_for_checkpoint()
    io.fail = False
    assert fabric.load(tmp_path / "ckpt.pt")["tag"] == "old"


@pytest.mark.timeout(60)
def test_teardown_waits_for_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate(monkeypatch)
    fabric = Fabric(accelerator="cpu", devices=1)
    model, _ = _model_and_optimizer(fabric)
    pending = fabric.save(tmp_path / "ckpt.pt", {"model": model}, async_save=True)
    assert pending is not None and not pending.done()
    opener = threading.Timer(0.3, gate.open)
    opener.start()
    fabric._teardown()  # what exit runs after its own wait; it must not leave a write behind either
    opener.join()
    assert pending.done()
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"].keys() == model.state_dict().keys()


def test_async_save_argument_and_strategies_that_write_their_own_way(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    with pytest.raises(TypeError, match=r"async_save='yes'"):
        fabric.save(tmp_path / "x.pt", {"a": 1}, async_save="yes")  # type: ignore[arg-type]

    class OwnWriter(SingleDeviceStrategy):
        def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("not reached")

    fabric = Fabric(strategy=OwnWriter(device=torch.device("cpu")))
    with pytest.raises(NotImplementedError, match=r"OwnWriter.*save_checkpoint.*async_save=False"):
        fabric.save(tmp_path / "x.pt", {"a": 1}, async_save=True)


def test_snapshot_copies_tensors_and_keeps_structure() -> None:
    weight = torch.arange(6.0).reshape(2, 3).requires_grad_()
    tree = OrderedDict(
        a=weight.detach(), tied=weight.detach(), nested={"b": [torch.ones(2), (3, "x")]}, plain={"k": [1]}
    )
    copied = snapshot(tree)
    assert type(copied) is OrderedDict and list(copied) == list(tree)
    assert copied["a"] is copied["tied"]  # the same view of one storage stays one copy
    assert copied["a"].data_ptr() != weight.data_ptr() and not copied["a"].requires_grad
    with torch.no_grad():
        weight.add_(1.0)
    tree["nested"]["b"][0].add_(1.0)
    tree["plain"]["k"].append(2)
    assert torch.equal(copied["a"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(copied["nested"]["b"][0], torch.ones(2))
    assert copied["nested"]["b"][1] == (3, "x") and copied["plain"] == {"k": [1]}


def test_snapshot_copies_each_view_of_a_flat_buffer_with_its_bytes() -> None:
    """ZeRO-3's sub-groups are views of one flat buffer, with uninitialized (possibly NaN) padding."""
    flat = torch.arange(10.0)
    flat[9] = torch.tensor(0x7FC0_1234, dtype=torch.int32).view(torch.float32)  # a NaN with a payload
    first, second, reshaped = flat[:4], flat[4:], flat.view(2, 5)
    copied = snapshot({"groups": [first, second], "first_again": flat[:4], "reshaped": reshaped})
    assert copied["groups"][0] is copied["first_again"]  # the same view: one copy
    with torch.no_grad():
        flat.zero_()
    expected = torch.arange(10.0)
    assert torch.equal(copied["groups"][0], expected[:4]) and torch.equal(copied["reshaped"][0], expected[:5])
    # a view's copy holds its own elements only, its NaN bit for bit
    assert copied["groups"][1].untyped_storage().nbytes() == 6 * 4
    assert copied["groups"][1][-1].view(torch.int32).item() == 0x7FC0_1234
    assert copied["reshaped"][1, -1].view(torch.int32).item() == 0x7FC0_1234


def test_snapshot_copies_into_the_previous_buffers_where_they_fit() -> None:
    weight = torch.arange(6.0).reshape(2, 3)
    tree = {"a": weight, "tied": weight, "b": torch.ones(4), "c": torch.zeros(3, dtype=torch.int64)}
    staging = Staging()
    first = snapshot(tree, staging)
    weight.add_(10.0)
    tree["b"] = torch.full((5,), 2.0)  # another shape: a fresh buffer
    second = snapshot(tree, staging)
    # the same memory, now holding the values at the second call; the tie stays one copy
    assert second["a"].data_ptr() == first["a"].data_ptr() and second["a"] is second["tied"]
    assert second["c"].data_ptr() == first["c"].data_ptr()
    assert torch.equal(second["a"], torch.arange(6.0).reshape(2, 3) + 10.0)
    assert second["a"].data_ptr() != weight.data_ptr()
    assert torch.equal(second["b"], torch.full((5,), 2.0)) and second["b"].data_ptr() != first["b"].data_ptr()
    staging.release()
    third = snapshot(tree, staging)
    assert third["a"].data_ptr() != second["a"].data_ptr()  # released: fresh copies again


_DTENSOR_STAGING = """
import json, sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from fabric.checkpoint.background import Staging, snapshot

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # one process: no port
mesh = init_device_mesh("cpu", (1,))
weight = distribute_tensor(torch.arange(6.0).reshape(2, 3), mesh, [Shard(0)])
staging = Staging()
first = snapshot({"w": weight}, staging)["w"]
weight.to_local().add_(10.0)
second = snapshot({"w": weight}, staging)["w"]
values = second.to_local().tolist()
# the same local tensor (so the same kept buffer) and placements, another global shape: a new wrapper
reshaped = DTensor.from_local(
    weight.to_local(), mesh, [Shard(0)], run_check=False, shape=torch.Size([4, 3]), stride=(3, 1)
)
fifth = snapshot({"w": reshaped}, staging)["w"]
same_buffer = fifth.to_local().data_ptr() == second.to_local().data_ptr()
other = distribute_tensor(torch.arange(6.0).reshape(2, 3), mesh, [Replicate()])
third = snapshot({"w": other}, staging)["w"]
staging.release()
fourth = snapshot({"w": other}, staging)["w"]
print(json.dumps({
    "dtensors": all(isinstance(t, DTensor) for t in (first, second, third, fourth)),
    "reused": second is first,
    "values": values,
    "own_memory": second.to_local().data_ptr() != weight.to_local().data_ptr(),
    "replicated": [isinstance(p, Replicate) for p in third.placements],
    "rewrapped": third is not second and fourth is not third,
    "reshaped": fifth is not second and tuple(fifth.shape) == (4, 3) and same_buffer,
    "third_values": third.full_tensor().tolist(),
}))
dist.destroy_process_group()
"""


@pytest.mark.timeout(90)
def test_snapshot_keeps_the_dtensors_that_wrap_kept_buffers() -> None:
    """The next snapshot of a sharded state reuses the DTensor around each kept buffer (no ``from_local``)."""
    run = run_python(["-c", _DTENSOR_STAGING], timeout=80)
    assert run.returncode == 0, run.output
    result = json.loads(next(line for line in reversed(run.output.splitlines()) if line.startswith("{")))
    assert result["dtensors"] and result["reused"] and result["own_memory"], result
    assert result["values"] == [[10.0, 11.0, 12.0], [13.0, 14.0, 15.0]]  # the values at the second call
    # another placement over a buffer of the same shape: a new DTensor; after release, new ones again
    assert result["replicated"] == [True] and result["rewrapped"], result
    assert result["reshaped"], result  # same buffer and placements, another global shape: not reused
    assert result["third_values"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


class _ShardedSingleDevice(SingleDeviceStrategy):
    """One process that writes the sharded directory layout (the layout whose snapshots are kept)."""

    @property
    def checkpoint_layout(self) -> Any:
        return "sharded"


@pytest.mark.timeout(120)
def test_consecutive_async_sharded_saves_each_hold_their_own_values(tmp_path: Path) -> None:
    fabric = Fabric(strategy=_ShardedSingleDevice(device=torch.device("cpu")))
    model, optimizer = _model_and_optimizer(fabric)
    state = {"model": model, "optimizer": optimizer}
    saved = []
    for index in range(3):
        _step(fabric, model, optimizer)
        saved.append(_clone(model.state_dict()))
        fabric.save(tmp_path / f"ckpt-{index}", state, async_save=True)  # the buffers of the save before
    fabric.wait_for_checkpoint()
    for index, expected in enumerate(saved):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
        fabric.load(tmp_path / f"ckpt-{index}", {"model": model})
        _assert_equal(model.state_dict(), expected)
    assert not torch.equal(saved[0]["0.weight"], saved[2]["0.weight"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_writer_thread_yields_the_cpu_to_training() -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: list[int] = []
    handle = AsyncSave("unused")
    handle.start(lambda: seen.append(niceness()))
    handle.wait()
    assert seen == [min(19, niceness() + 10)]


@pytest.mark.timeout(60)
def test_manager_rotates_only_after_the_background_write(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = _model_and_optimizer(fabric)
    manager = CheckpointManager(fabric, tmp_path, every=1, keep_last=2, async_save=True)
    state = {"model": model, "optimizer": optimizer}
    for _ in range(4):
        _step(fabric, model, optimizer)
        manager.step(state)
    expected = _clone(model.state_dict())
    fabric.wait_for_checkpoint()
    assert [step for step, _ in manager.checkpoints()] == [3, 4]
    resumed = CheckpointManager(fabric, tmp_path, async_save=True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    assert resumed.resume(state) == 4
    _assert_equal(model.state_dict(), expected)


# ------------------------------------------------------------------------------------- real runs
@pytest.mark.timeout(150)
@pytest.mark.parametrize(("strategy", "devices"), [("fsdp", 2), ("ddp", 2)])
def test_real_runs(tmp_path: Path, strategy: str, devices: int) -> None:
    run = run_python([str(SCRIPTS / "async_save.py"), str(tmp_path), strategy, str(devices)], timeout=130)
    ranks = read_rank_results(tmp_path, world_size=devices)
    for rank, result in enumerate(ranks):
        errors = {k: v["error"] for k, v in result.items() if isinstance(v, dict) and "error" in v}
        assert not errors, (rank, errors, run.output)
        trip = result["round_trip"]
        assert trip["held"]  # the write had not started when the parameters changed
        for name in (
            "async",
            "sync",
        ):  # the async checkpoint equals the sync one, both the values at the call
            assert trip[name]["model_diff"] == 0.0 and trip[name]["exp_avg_diff"] == 0.0, trip
            assert trip[name]["steps_equal"] and trip[name]["steps"] == [3.0]
            assert trip[name]["rest"] == {"step": 3, "history": [1, 2]}
        waits = result["next_save_waits"]
        assert waits["first_done_when_second_started"] and waits["tags"] == ["first", "second"]
        failure = result["failure"]
        # Every process raises at the next call: rank 0 its own error, the others name rank 0's.
        expected = "OSError" if rank == 0 or strategy == "fsdp" else "CheckpointError"
        assert failure["raised"]["raised"] == expected, failure
        assert "File too large" in failure["raised"]["message"]
        assert failure["again"]["raised"] is None
        assert failure["tag"] == "old"
    # A failed save nobody waited for: the process says so and exits non-zero.
    assert run.returncode != 0
    assert "the background save of" in run.output and "File too large" in run.output
    if strategy == "fsdp":
        assert (tmp_path / "async" / "fabric-manifest.json").is_file()


@pytest.mark.timeout(150)
def test_a_rank_killed_during_the_background_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    from tests.checkpoint.scripts.killed_async_save import LAYERS, WIDTH, big_model

    killer = KillDuringWrite(tmp_path)
    killer.start()
    try:
        run = run_python([str(SCRIPTS / "killed_async_save.py"), str(tmp_path)], timeout=130)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed_at_bytes is not None, run.output
    assert 0 < killer.killed_at_bytes < LAYERS * WIDTH * WIDTH * 4 // 2  # mid-write of its shard
    assert run.returncode != 0
    assert not list(tmp_path.glob("B_saved_rank*"))

    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS))))
    remainder = fabric.load(tmp_path / "checkpoint", {"model": model})
    assert remainder["tag"] == "A"
    for (name, value), (_, loaded) in zip(
        big_model().state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(loaded, value), name
