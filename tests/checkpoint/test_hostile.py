"""Sharded checkpoint directories under hostile input and faults: the promises single files keep, kept here too.

The directories are written by the real pipeline (``Fabric.save`` with a strategy whose layout is a
sharded directory, through torch.distributed.checkpoint), then crafted the way an attacker or a faulty
disk would: a ``.metadata`` pickle that runs code, file names that lead out of the directory, flipped
bits, truncated shards, a writer killed at random moments, a full disk.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric import Fabric
from fabric.checkpoint import CheckpointError, CheckpointIO, NotAFileError, TorchCheckpointIO, reclaim
from fabric.checkpoint.consolidate import consolidate
from fabric.checkpoint.sharded import MANIFEST_FILE
from fabric.strategies.single_device import SingleDeviceStrategy
from tests.strategies.multiprocess import launch_env

POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="POSIX file semantics")


class ShardedSingleDevice(SingleDeviceStrategy):
    """One process that writes the sharded directory layout (as FSDP with one device does)."""

    @property
    def checkpoint_layout(self) -> Literal["file", "sharded"]:
        return "sharded"


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _fabric(sharded: bool = True) -> Fabric:
    return Fabric(accelerator="cpu", strategy=ShardedSingleDevice() if sharded else "auto", devices=1)


def _trained(fabric: Fabric, seed: int = 0) -> tuple[Any, Any]:
    model, optimizer = fabric.setup(_net(seed), torch.optim.Adam(_net(seed).parameters(), lr=0.1))
    return model, optimizer


def _setup(fabric: Fabric, seed: int = 0) -> tuple[Any, Any]:
    module = _net(seed)
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=0.1))
    for _ in range(2):
        fabric.backward(model(torch.randn(5, 8)).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _write(path: Path, seed: int = 0, **extra: Any) -> dict[str, torch.Tensor]:
    fabric = _fabric()
    model, optimizer = _setup(fabric, seed)
    fabric.save(path, {"model": model, "optimizer": optimizer, **extra})
    return {k: v.clone() for k, v in model.state_dict().items()}


def _fresh_state(fabric: Fabric, seed: int = 99) -> dict[str, Any]:
    model, optimizer = _setup(fabric, seed)
    return {"model": model, "optimizer": optimizer}


def _load(path: Path, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    fabric = _fabric()
    state = _fresh_state(fabric)
    remainder = fabric.load(path, state, **kwargs)
    return state, remainder


def _weights_equal(model: Any, expected: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


# ----------------------------------------------------------------------------- 1. code in the metadata
class _RunsCode:
    """Unpickling this touches ``marker`` (and, stealthily, then returns the real metadata)."""

    def __init__(self, marker: Path, then: bytes | None = None) -> None:
        self.marker, self.then = marker, then

    def __reduce__(self) -> Any:
        source = f"(__import__('pathlib').Path({str(self.marker)!r}).touch(), "
        source += f"__import__('pickle').loads({self.then!r}))[1]" if self.then is not None else "None)[1]"
        return (eval, (source,))


def _plant_code(directory: Path, marker: Path, stealthy: bool = True) -> None:
    original = (directory / ".metadata").read_bytes()
    (directory / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker, original if stealthy else None)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stealthy", [True, False])
def test_crafted_metadata_does_not_run_code_on_load(tmp_path: Path, stealthy: bool) -> None:
    _write(tmp_path / "ckpt")
    marker = tmp_path / "PWNED"
    _plant_code(tmp_path / "ckpt", marker, stealthy)
    # The attacker also rewrites the manifest so that the checksums match.
    _rewrite_manifest(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="could run code"):
        _load(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="could run code"):
        _fabric().load(tmp_path / "ckpt")
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_trusted_loads_still_work_with_weights_only_false(tmp_path: Path) -> None:
    expected = _write(tmp_path / "ckpt")
    state, _ = _load(tmp_path / "ckpt", weights_only=False)
    assert _weights_equal(state["model"], expected)


@pytest.mark.timeout(60)
def test_crafted_old_version_beside_a_missing_checkpoint_does_not_run_code(tmp_path: Path) -> None:
    _write(tmp_path / "elsewhere")
    planted = tmp_path / ".ckpt.old-0123456789abcdef"
    shutil.copytree(tmp_path / "elsewhere", planted)
    marker = tmp_path / "PWNED"
    _plant_code(planted, marker)
    _rewrite_manifest(planted)
    with pytest.raises(CheckpointError, match="could run code"):
        _load(tmp_path / "ckpt")
    assert not marker.exists()


@pytest.mark.timeout(90)
def test_consolidate_of_a_crafted_directory_does_not_run_code(tmp_path: Path) -> None:
    _write(tmp_path / "ckpt")
    marker = tmp_path / "PWNED"
    _plant_code(tmp_path / "ckpt", marker)
    _rewrite_manifest(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="could run code"):
        consolidate(tmp_path / "ckpt", tmp_path / "out.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric.cli",
            "consolidate",
            str(tmp_path / "ckpt"),
            str(tmp_path / "out2.pt"),
        ],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "could run code" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out2.pt").exists()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (eval, (f"__import__('pathlib').Path({self.marker!r}).touch()",))


@pytest.mark.timeout(60)
def test_crafted_value_inside_a_shard_does_not_run_code(tmp_path: Path) -> None:
    """DCP unpickles non-tensor entries with weights_only=False by itself; ours goes through weights_only."""
    import torch.distributed.checkpoint as dcp

    directory = tmp_path / "ckpt"
    marker = tmp_path / "PWNED"
    dcp.save({"other": {"value": _Evil(str(marker))}}, checkpoint_id=str(directory), no_dist=True)
    _rewrite_manifest(directory)
    fabric = _fabric()
    with pytest.raises(CheckpointError, match="weights_only"):
        fabric.load(directory, _fresh_state(fabric), strict=False)
    assert not marker.exists()


# ----------------------------------------------------------------------------- 2. path traversal
def _retarget(directory: Path, new_name: str) -> None:
    """Rewrite ``.metadata`` (with DCP's own classes only) so that every record points at ``new_name``."""
    metadata = pickle.loads((directory / ".metadata").read_bytes())
    for info in metadata.storage_data.values():
        info.relative_path = new_name
    (directory / ".metadata").write_bytes(pickle.dumps(metadata))
    _rewrite_manifest(directory)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_metadata_cannot_read_files_outside_the_directory(tmp_path: Path, how: str) -> None:
    _write(tmp_path / "ckpt", seed=1)
    _write(tmp_path / "victim", seed=2)
    outside = tmp_path / "secret.distcp"
    shutil.copy(tmp_path / "victim" / "__0_0.distcp", outside)
    if how == "dotdot":
        _retarget(tmp_path / "ckpt", "../secret.distcp")
    elif how == "absolute":
        _retarget(tmp_path / "ckpt", str(outside))
    else:
        os.remove(tmp_path / "ckpt" / "__0_0.distcp")
        os.symlink(outside, tmp_path / "ckpt" / "__0_0.distcp")
        _rewrite_manifest(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="outside its directory"):
        _load(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="outside its directory"):
        consolidate(tmp_path / "ckpt", tmp_path / "out.pt")


# ----------------------------------------------------------------------------- 3. integrity of every shard
def _rewrite_manifest(directory: Path) -> None:
    from fabric.checkpoint.sharded import checksum, files_to_record, write_manifest

    write_manifest(str(directory), {n: checksum(str(directory / n)) for n in files_to_record(str(directory))})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    directory = tmp_path_factory.mktemp("pristine") / "ckpt"
    return directory, _write(directory, seed=3, step=7)


def _copy(pristine: tuple[Path, Any], tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(pristine[0], target)
    return target


@pytest.mark.timeout(120)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_bit_in_any_file_is_an_error_naming_the_file(
    pristine: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    directory = _copy(pristine, tmp_path_factory.mktemp("flip"))
    names = sorted(n for n in os.listdir(directory) if n != MANIFEST_FILE)
    name = data.draw(st.sampled_from(names))
    blob = bytearray((directory / name).read_bytes())
    offset = data.draw(st.integers(0, len(blob) - 1))
    blob[offset] ^= 1 << data.draw(st.integers(0, 7))
    (directory / name).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=f"'{directory / name}' does not match its checksum"):
        _load(directory)


@pytest.mark.timeout(120)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncated_file_is_an_error(
    pristine: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    directory = _copy(pristine, tmp_path_factory.mktemp("cut"))
    name = data.draw(st.sampled_from(sorted(n for n in os.listdir(directory) if n != MANIFEST_FILE)))
    size = (directory / name).stat().st_size
    with open(directory / name, "r+b") as file:
        file.truncate(data.draw(st.integers(0, size - 1)))
    with pytest.raises(CheckpointError, match="truncated"):
        _load(directory)


@pytest.mark.timeout(60)
def test_a_shard_swapped_for_another_valid_shard_is_an_error(
    pristine: tuple[Path, Any], tmp_path: Path
) -> None:
    directory = _copy(pristine, tmp_path)
    _write(tmp_path / "other", seed=4)
    shutil.copy(tmp_path / "other" / "__0_0.distcp", directory / "__0_0.distcp")
    with pytest.raises(CheckpointError, match="checksum|truncated"):
        _load(directory)


@pytest.mark.timeout(60)
def test_a_damaged_manifest_is_an_error(pristine: tuple[Path, Any], tmp_path: Path) -> None:
    directory = _copy(pristine, tmp_path)
    (directory / MANIFEST_FILE).write_text('{"format": "fabric-sharded-checkpoint", "files": [1')
    with pytest.raises(CheckpointError, match="manifest .* is corrupted"):
        _load(directory)


@pytest.mark.timeout(60)
def test_a_pristine_directory_loads_exactly(
    pristine: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    state, remainder = _load(_copy(pristine, tmp_path))
    assert _weights_equal(state["model"], pristine[1])
    assert remainder == {"step": 7}


# ----------------------------------------------------------------------------- 4. consolidate never eats its input
@pytest.mark.timeout(120)
@pytest.mark.parametrize("inside", [".metadata", "__0_0.distcp", "sub/out.pt", "."])
def test_consolidate_refuses_an_output_inside_its_input(
    pristine: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, inside: str
) -> None:
    directory = _copy(pristine, tmp_path)
    before = {n: (directory / n).read_bytes() for n in os.listdir(directory)}
    result = subprocess.run(
        [sys.executable, "-m", "fabric.cli", "consolidate", str(directory), str(directory / inside)],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "inside the checkpoint directory" in result.stderr or "is a directory" in result.stderr
    assert {n: (directory / n).read_bytes() for n in os.listdir(directory)} == before
    state, _ = _load(directory)
    assert _weights_equal(state["model"], pristine[1])


@pytest.mark.timeout(120)
def test_consolidate_takes_lightnings_output_file_option_and_default(
    pristine: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    directory = _copy(pristine, tmp_path)
    for extra, expected in (
        ([], tmp_path / "ckpt.consolidated"),
        (["--output_file", str(tmp_path / "x.pt")], tmp_path / "x.pt"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "fabric.cli", "consolidate", str(directory), *extra],
            env=launch_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        full = torch.load(expected, weights_only=True)
        assert all(torch.equal(full["model"][k], v) for k, v in pristine[1].items())
        assert full["step"] == 7


# ----------------------------------------------------------------------------- 5. leftovers of a killed save
def _dead_pid() -> int:
    return int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    )


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_only_stale_temporary_directories_of_this_target_are_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = "".join(c if c.isalnum() or c in "_." else "_" for c in socket.gethostname())[:40]
    dead = _dead_pid()
    stale = tmp_path / f".ckpt.tmp-{host}-{dead}-0123456789abcdef"
    live = tmp_path / f".ckpt.tmp-{host}-{os.getppid()}-0123456789abcdef"
    other_host = tmp_path / f".ckpt.tmp-another-node-{dead}-0123456789abcdef"
    other_target = tmp_path / f".other.tmp-{host}-{dead}-0123456789abcdef"
    for directory in (stale, live, other_host, other_target):
        directory.mkdir()
        (directory / "__0_0.distcp").write_bytes(b"x" * 1000)
    with caplog.at_level("INFO"):
        _write(tmp_path / "ckpt")
    assert not stale.exists()
    assert live.exists() and other_host.exists() and other_target.exists()
    assert str(stale) in caplog.text and "left by a save that was killed" in caplog.text


# ----------------------------------------------------------------------------- 6. keys with dots
@pytest.mark.timeout(60)
def test_keys_with_dots_round_trip(tmp_path: Path) -> None:
    fabric = _fabric()
    model, optimizer = _setup(fabric, seed=5)
    ema = fabric.setup_module(_net(6))
    fabric.save(tmp_path / "ckpt", {"model": model, "model.ema": ema, "optimizer": optimizer, "a.b": 3})
    fabric = _fabric()
    state = _fresh_state(fabric)
    state["model.ema"] = fabric.setup_module(_net(7))
    state["a.b"] = 0
    assert fabric.load(tmp_path / "ckpt", state, strict=True) == {}
    assert _weights_equal(state["model"], model.state_dict())
    assert _weights_equal(state["model.ema"], ema.state_dict())
    assert state["a.b"] == 3


# ----------------------------------------------------------------------------- 7. devices and pipes
@POSIX_ONLY
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sharded", [False, True])
def test_save_never_replaces_a_pipe_or_device(tmp_path: Path, sharded: bool) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [fifo]
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets.append(device)
    except PermissionError:
        pass
    fabric = _fabric(sharded)
    model, optimizer = _setup(fabric)
    for target in targets:
        kind = stat.S_IFMT(target.stat().st_mode)
        with pytest.raises((CheckpointError, NotAFileError), match="not a|device"):
            fabric.save(target, {"model": model, "optimizer": optimizer})
        assert stat.S_IFMT(target.stat().st_mode) == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)


@POSIX_ONLY
@pytest.mark.timeout(30)
def test_load_from_a_pipe_fails_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotAFileError, match="not a regular file"):
        _fabric(sharded=False).load(tmp_path / "fifo")


# ----------------------------------------------------------------------------- 8. restore_rng, scaler
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sharded", [False, True])
def test_restore_rng_false_keeps_the_current_random_state(tmp_path: Path, sharded: bool) -> None:
    fabric = _fabric(sharded)
    model, optimizer = _setup(fabric)
    torch.manual_seed(1)
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer})
    after_save = torch.rand(3)
    torch.manual_seed(2)
    fabric.load(tmp_path / "ckpt", {"model": model, "optimizer": optimizer}, restore_rng=False)
    kept = torch.rand(3)
    torch.manual_seed(2)
    assert torch.equal(kept, torch.rand(3))
    fabric.load(tmp_path / "ckpt", {"model": model, "optimizer": optimizer})
    assert torch.equal(torch.rand(3), after_save)


@pytest.mark.timeout(60)
def test_load_without_state_restores_nothing_not_even_the_scaler(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1, precision="16-mixed")
    model, optimizer = _setup(fabric)
    scaler = fabric.strategy.precision.scaler
    scaler.update(1024.0)
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "optimizer": optimizer})
    scaler.update(8.0)
    checkpoint = fabric.load(tmp_path / "ckpt.pt")
    assert scaler.get_scale() == 8.0
    assert set(checkpoint) == {"model", "optimizer"}  # the resume state is Fabric's, not returned
    fabric.load(tmp_path / "ckpt.pt", {"model": model})
    assert scaler.get_scale() == 1024.0


# ----------------------------------------------------------------------------- 9. the remainder, every layout
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sharded", [False, True])
def test_an_optimizer_not_asked_for_comes_back_in_the_remainder(tmp_path: Path, sharded: bool) -> None:
    fabric = _fabric(sharded)
    model, optimizer = _setup(fabric, seed=8)
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "step": 2})
    fresh = _fabric(sharded)
    remainder = fresh.load(tmp_path / "ckpt", {"model": fresh.setup(_net(0))})
    assert set(remainder) == {"optimizer", "step"}
    saved = optimizer.state_dict()
    returned = remainder["optimizer"]
    exp_avgs = [s["exp_avg"] for s in returned["state"].values()]
    assert len(exp_avgs) == len(saved["state"])
    for expected, value in zip([s["exp_avg"] for s in saved["state"].values()], exp_avgs):
        assert torch.equal(expected, value)


# ----------------------------------------------------------------------------- 11. reserved keys
@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", ["__fabric_per_rank__", "__fabric_precision__"])
def test_internal_keys_in_the_users_state_are_an_error(tmp_path: Path, key: str) -> None:
    fabric = _fabric(sharded=False)
    model, _ = _setup(fabric)
    with pytest.raises(ValueError, match="reserved"):
        fabric.save(tmp_path / "ckpt.pt", {"model": model, key: 1})
    assert not (tmp_path / "ckpt.pt").exists()
    fabric.save(tmp_path / "ckpt.pt", {"model": model})
    with pytest.raises(ValueError, match="reserved"):
        fabric.load(tmp_path / "ckpt.pt", {"model": model, key: 1})


# ----------------------------------------------------------------------------- plain states are written as given
@pytest.mark.timeout(60)
def test_a_plain_state_dict_comes_back_from_torch_load_exactly(tmp_path: Path) -> None:
    fabric = _fabric(sharded=False)
    model, _ = _setup(fabric)
    fabric.save(tmp_path / "weights.pt", model.state_dict())
    loaded = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert isinstance(loaded, OrderedDict)
    assert list(loaded) == list(model.state_dict())
    net = _net(42)
    net.load_state_dict(loaded)  # Lightning's image-classifier example does exactly this
    assert _weights_equal(net, model.state_dict())
    fabric.save(tmp_path / "plain.pt", {"step": 3, "lr": 0.1})
    assert torch.load(tmp_path / "plain.pt", weights_only=True) == {"step": 3, "lr": 0.1}


@pytest.mark.timeout(60)
def test_filter_on_a_plain_value_stores_it_as_is(tmp_path: Path) -> None:
    fabric = _fabric(sharded=False)
    fabric.save(
        tmp_path / "c.pt",
        {"step": 3, "d": {"a": 1, "b": 2}},
        filter={"step": lambda k, v: False, "d": lambda k, v: k == "a"},
    )
    assert torch.load(tmp_path / "c.pt", weights_only=True) == {"step": 3, "d": {"a": 1}}


@pytest.mark.timeout(60)
def test_load_raw_takes_weights_only_and_refuses_a_directory(tmp_path: Path) -> None:
    fabric = _fabric(sharded=False)
    model, _ = _setup(fabric, seed=9)
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    target = fabric.setup(_net(0))
    fabric.load_raw(tmp_path / "raw.pt", target, weights_only=False)
    assert _weights_equal(target, model.state_dict())
    with pytest.raises(ValueError, match="is a directory"):
        fabric.load_raw(tmp_path, target)


# ----------------------------------------------------------------------------- CheckpointIO plugins and remote stores
class _DictStore(CheckpointIO):
    """A user's storage plugin: keeps the bytes of each checkpoint in a dict."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        self.blobs[str(path)] = buffer.getvalue()

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool = True) -> Any:
        return torch.load(
            io.BytesIO(self.blobs[str(path)]), map_location=map_location, weights_only=weights_only
        )

    def remove_checkpoint(self, path: Any) -> None:
        del self.blobs[str(path)]


@pytest.mark.timeout(60)
def test_a_checkpoint_io_plugin_stores_the_checkpoints(tmp_path: Path) -> None:
    store = _DictStore()
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[store])
    model, optimizer = _setup(fabric, seed=10)
    fabric.save("bucket/ckpt", {"model": model, "optimizer": optimizer, "step": 1})
    assert list(store.blobs) == ["bucket/ckpt"] and not (tmp_path / "bucket").exists()
    state = _fresh_state(fabric)
    assert fabric.load("bucket/ckpt", state) == {"step": 1}
    assert _weights_equal(state["model"], model.state_dict())


@pytest.mark.timeout(60)
def test_remote_paths_go_through_fsspec_with_the_same_checks(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = _setup(fabric, seed=11)
    url = f"memory://{tmp_path.name}/ckpt.pt"
    fabric.save(url, {"model": model, "optimizer": optimizer})
    state = _fresh_state(fabric)
    fabric.load(url, state)
    assert _weights_equal(state["model"], model.state_dict())
    assert fs.ls(f"/{tmp_path.name}", detail=False) == [f"/{tmp_path.name}/ckpt.pt"]  # no temporary left
    # A flipped bit in the stored object is caught as for a local file.
    blob = bytearray(fs.cat(f"/{tmp_path.name}/ckpt.pt"))
    blob[len(blob) // 2] ^= 0x10
    fs.pipe(f"/{tmp_path.name}/ckpt.pt", bytes(blob))
    with pytest.raises(CheckpointError, match="corrupted"):
        fabric.load(url, _fresh_state(fabric))
    TorchCheckpointIO().remove_checkpoint(url)
    assert not fs.exists(f"/{tmp_path.name}/ckpt.pt")


@pytest.mark.timeout(60)
def test_a_failed_remote_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    url = f"memory://{tmp_path.name}/ckpt.pt"
    fabric.save(url, {"step": 1})

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        fabric.save(url, {"step": 2, "bad": Unpicklable()})
    assert fabric.load(url) == {"step": 1}


# ----------------------------------------------------------------------------- SIGKILL and a full disk, sharded
def _version_of(path: Path) -> int:
    """Which save a directory holds: every weight of version v equals v."""
    fabric = _fabric()
    model = fabric.setup(torch.nn.Linear(64, 64))
    remainder = fabric.load(path, {"model": model})
    values = {float(v) for t in model.state_dict().values() for v in t.flatten().unique()}
    assert values == {float(remainder["version"])}, values
    return int(remainder["version"])


def _save_versions_forever(path: Path, start: int) -> None:
    torch.set_num_threads(1)
    fabric = _fabric()
    model = fabric.setup(torch.nn.Linear(64, 64))
    version = start
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(version)
        fabric.save(path, {"model": model, "version": version})
        version += 1


@POSIX_ONLY
@pytest.mark.timeout(240)
def test_twenty_random_kills_during_sharded_saves_always_leave_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    _write_version(path, 0)
    rng = random.Random(1234)
    last = 0
    for kill in range(20):
        pid = os.fork()
        if pid == 0:  # the writer: saves new versions until it is killed
            try:
                _save_versions_forever(path, last + 1)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        version = _version_of(path)
        assert version >= last, (kill, version, last)
        last = version
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
    _write_version(path, last + 1)  # the next save cleans up after the killed writers
    reclaim.wait()  # ... in the background thread that frees replaced checkpoints
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], leftovers


def _write_version(path: Path, version: int) -> None:
    fabric = _fabric()
    model = fabric.setup(torch.nn.Linear(64, 64))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(version)
    fabric.save(path, {"model": model, "version": version})


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_a_full_disk_during_a_sharded_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    import resource

    path = tmp_path / "ckpt"
    _write_version(path, 1)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            _write_version(path, 2)
        except OSError:
            code = 0
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the save raised an OSError
    assert _version_of(path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # the failed save removed its directory


# ----------------------------------------------------------------------------- 10. FSDP keeps no model alive
@pytest.mark.timeout(120)
def test_fsdp_does_not_keep_the_models_it_sharded_alive() -> None:
    from tests.strategies.multiprocess import REPO_ROOT, run_python

    run = run_python(
        [str(REPO_ROOT / "tests" / "checkpoint" / "scripts" / "fsdp_releases_models.py")], timeout=100
    )
    assert run.returncode == 0, run.output
    assert run.output.strip().splitlines()[-1] == "OK", run.output


@POSIX_ONLY
@pytest.mark.timeout(150)
def test_a_sharded_save_past_the_file_size_limit_on_two_processes_raises_oserror(tmp_path: Path) -> None:
    """Issue 19 #8: DCP sends each rank's failure to every rank as a CheckpointException (a BaseException,
    missed by `except Exception`) whose failures lost the OSError; every rank now gets the OSError, and
    the previous checkpoint still loads."""
    from tests.strategies.multiprocess import REPO_ROOT, run_python

    script = REPO_ROOT / "tests" / "checkpoint" / "scripts" / "sharded_disk_full.py"
    run = run_python([str(script), str(tmp_path / "ckpt")], timeout=140)
    results = sorted(re.findall(r"RESULT [^;]*;", run.output))
    assert results == [f"RESULT rank={rank} caught=OSError errno={errno.EFBIG} step=1;" for rank in (0, 1)], (
        run.output
    )
    assert run.returncode == 0, run.output
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # the failed save removed its directory
