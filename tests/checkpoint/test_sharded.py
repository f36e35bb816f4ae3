"""Sharded checkpoints (DCP directories) and full files, across layouts and world sizes.

Real runs write the checkpoints: ``checkpoint_single.py`` (one process: FSDP with ``devices=1`` and a
plain Fabric) and ``checkpoint_fsdp.py`` (two FSDP processes), which also loads every layout back
into sharded models. This process then loads the two-process checkpoints into a plain one-process
Fabric, consolidates a directory with ``fabric consolidate``, and checks that a save killed halfway
leaves the previous checkpoint. Every load compares the model's weights and Adam's ``exp_avg`` and
``step`` with the values the writer recorded.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric import Fabric
from fabric.checkpoint import reclaim
from fabric.checkpoint.consolidate import consolidate
from fabric.checkpoint.io import CheckpointError
from fabric.checkpoint.sharded import (
    checksum,
    commit_directory,
    files_to_record,
    read_manifest,
    resolve_checkpoint_path,
    save_shards,
    write_manifest,
)
from fabric.checkpoint.states import is_name_keyed, optimizer_state_by_index, optimizer_state_by_name
from tests.checkpoint.killing import KillDuringWrite
from tests.strategies.fsdp_scripts.common import Net, compare_state, fresh, full_parameters, section_errors
from tests.strategies.multiprocess import REPO_ROOT, launch_env, read_rank_results, run_python

SCRIPTS = REPO_ROOT / "tests" / "strategies" / "fsdp_scripts"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out_dir = tmp_path_factory.mktemp("checkpoints")
    single = run_python([str(SCRIPTS / "checkpoint_single.py"), str(out_dir)], timeout=60)
    assert single.returncode == 0, single.output
    run = run_python([str(SCRIPTS / "checkpoint_fsdp.py"), str(out_dir)], timeout=100)
    assert run.returncode == 0, run.output
    ranks = read_rank_results(out_dir, world_size=2)
    assert not section_errors(ranks), section_errors(ranks)
    return out_dir, ranks


def _assert_restored(result: dict[str, Any], step: float) -> None:
    assert result["model_diff"] == 0.0
    assert result["exp_avg_diff"] == 0.0
    assert result["steps_equal"]
    assert result["steps"] == [step]


# ------------------------------------------------------------- into two-process FSDP
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("section", "step", "tag"),
    [
        ("sharded_to_fsdp", 3.0, "sharded"),  # 2-process directory -> 2 processes
        ("ws1_sharded_to_fsdp", 3.0, "ws1"),  # 1-process directory -> 2 processes (world size change)
        ("full_to_fsdp", 3.0, "full"),  # state_dict_type="full" file -> 2 processes
        ("plain_to_fsdp", 4.0, "plain"),  # plain single-device Fabric file -> 2 processes
    ],
)
def test_fsdp_loads_every_layout(
    written: tuple[Path, list[dict[str, Any]]], section: str, step: float, tag: str
) -> None:
    _, ranks = written
    for result in ranks:
        loaded = result[section]
        _assert_restored(loaded, step)
        assert loaded["step"] == int(step)  # plain values come back into the user's dict
        assert loaded["remainder"] == {"tag": tag}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "section",
    [
        "sharded_to_fsdp",
        "ws1_sharded_to_fsdp",
        "full_to_fsdp",
        "plain_to_fsdp",
    ],
)
def test_training_continues_after_loading(written: tuple[Path, list[dict[str, Any]]], section: str) -> None:
    """The restored optimizer state is sharded like the parameters, so the next step works."""
    for result in written[1]:
        assert result[section]["exp_avg_types"] == ["DTensor"]
        assert result[section]["continues"], result[section]["continue_error"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("section", ["strict_sharded", "strict_full"])
def test_strict_raises_and_lenient_returns_the_remainder(
    written: tuple[Path, list[dict[str, Any]]], section: str
) -> None:
    for result in written[1]:
        checks = result[section]
        assert checks["strict_extra_key"]["raised"] == "KeyError"
        assert "absent" in checks["strict_extra_key"]["message"]
        assert "strict=False" in checks["strict_extra_key"]["message"]
        _assert_restored(checks["lenient_extra_key"], 3.0)
        assert {"step", "tag"} <= set(checks["lenient_extra_key"]["remainder_keys"])

        # The model has a layer the checkpoint lacks.
        assert checks["strict_missing_parameter"]["raised"] in ("RuntimeError", "CheckpointError")
        assert "extra.weight" in checks["strict_missing_parameter"]["message"]
        lenient = checks["lenient_missing_parameter"]
        assert lenient["model_diff"] == 0.0
        assert lenient["extra_untouched"] == 0.0
        assert {"step", "tag"} <= set(lenient["remainder_keys"])


# ------------------------------------------------------------- into one plain process
def _load_plain(path: Path, strict: bool = True, extra: dict[str, Any] | None = None) -> tuple[Any, ...]:
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = fresh(fabric)
    state = {"model": model, "optimizer": optimizer, "step": 0, **(extra or {})}
    remainder = fabric.load(path, state, strict=strict)
    return model, optimizer, state, remainder


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("name", "tag"), [("fsdp_sharded", "sharded"), ("fsdp_full.pt", "full")])
def test_plain_fabric_loads_what_two_fsdp_processes_wrote(
    written: tuple[Path, list[dict[str, Any]]], name: str, tag: str
) -> None:
    out_dir, _ = written
    reference = torch.load(out_dir / "fsdp_reference.pt", weights_only=True)
    model, optimizer, state, remainder = _load_plain(out_dir / name)
    _assert_restored(compare_state(model, optimizer, reference), 3.0)
    assert state["step"] == 3
    assert remainder == {"tag": tag}
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())

    with pytest.raises(KeyError, match="absent"):
        _load_plain(out_dir / name, extra={"absent": 1})
    model, optimizer, _, remainder = _load_plain(out_dir / name, strict=False, extra={"absent": 1})
    _assert_restored(compare_state(model, optimizer, reference), 3.0)
    assert remainder == {"tag": tag}


@pytest.mark.timeout(180)
def test_load_without_state_returns_the_whole_directory_as_full_tensors(
    written: tuple[Path, list[dict[str, Any]]],
) -> None:
    """README, Checkpoints: "`fabric.load(path)` returns everything" and "entries of a directory come back as
    full tensors": the directory two FSDP processes wrote, read by one plain process without a state."""
    out_dir, _ = written
    reference = torch.load(out_dir / "fsdp_reference.pt", weights_only=True)
    everything = Fabric(accelerator="cpu", devices=1).load(out_dir / "fsdp_sharded")
    assert (everything["step"], everything["tag"]) == (3, "sharded")
    model = everything["model"]
    assert set(model) == set(reference["model"])
    for name, expected in reference["model"].items():
        assert type(model[name]) is torch.Tensor and torch.equal(model[name], expected), name
    assert "state" in everything["optimizer"] and "param_groups" in everything["optimizer"]


@pytest.mark.timeout(180)
def test_the_manifest_two_processes_recorded_while_writing_matches_the_files(
    written: tuple[Path, list[dict[str, Any]]],
) -> None:
    # each process took its shards' checksums while writing them (fabric/checkpoint/checksummed.py)
    directory = written[0] / "fsdp_sharded"
    manifest = read_manifest(str(directory))
    names = files_to_record(str(directory))
    assert manifest is not None and sorted(manifest) == names
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= set(names)
    assert manifest == {name: checksum(str(directory / name)) for name in names}


@pytest.mark.timeout(180)
def test_fabric_consolidate_writes_one_loadable_file(written: tuple[Path, list[dict[str, Any]]]) -> None:
    out_dir, _ = written
    output = out_dir / "consolidated.pt"
    result = subprocess.run(
        [sys.executable, "-m", "fabric.cli", "consolidate", str(out_dir / "fsdp_sharded"), str(output)],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = torch.load(out_dir / "fsdp_reference.pt", weights_only=True)

    checkpoint = torch.load(output, weights_only=True)
    assert {"model", "optimizer", "step", "tag"} <= set(checkpoint)
    assert (checkpoint["step"], checkpoint["tag"]) == (3, "sharded")
    assert set(checkpoint["model"]) == set(reference["model"])
    for name, value in reference["model"].items():
        assert torch.equal(checkpoint["model"][name], value)
    for name, value in reference["exp_avg"].items():
        assert torch.equal(checkpoint["optimizer"]["state"][name]["exp_avg"], value)

    # The model part loads into a plain module with torch alone.
    module = Net()
    module.load_state_dict(checkpoint["model"])
    assert all(torch.equal(full_parameters(module)[k], v) for k, v in reference["model"].items())


@pytest.mark.timeout(180)
def test_fabric_loads_the_consolidated_file(written: tuple[Path, list[dict[str, Any]]]) -> None:
    out_dir, _ = written
    output = out_dir / "consolidated_for_load.pt"
    consolidate(out_dir / "fsdp_sharded", output)
    reference = torch.load(out_dir / "fsdp_reference.pt", weights_only=True)
    model, optimizer, state, remainder = _load_plain(output)
    _assert_restored(compare_state(model, optimizer, reference), 3.0)
    assert state["step"] == 3
    assert remainder == {"tag": "sharded"}


@pytest.mark.timeout(60)
def test_consolidate_refuses_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        consolidate(tmp_path / "empty", tmp_path / "out.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric.cli",
            "consolidate",
            str(tmp_path / "empty"),
            str(tmp_path / "out.pt"),
        ],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a sharded checkpoint" in result.stderr
    assert not (tmp_path / "out.pt").exists()


# ------------------------------------------------------------- a save killed halfway
@pytest.mark.timeout(180)
def test_a_save_killed_halfway_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    from tests.strategies.fsdp_scripts.killed_save import LAYERS, WIDTH, big_model

    killer = KillDuringWrite(tmp_path)
    killer.start()
    try:
        run = run_python([str(SCRIPTS / "killed_save.py"), str(tmp_path)], timeout=150)
    finally:
        killer.stop.set()
        killer.join()
    shard_bytes = LAYERS * WIDTH * WIDTH * 4 // 2
    assert killer.killed_at_bytes is not None, run.output
    assert 0 < killer.killed_at_bytes < shard_bytes  # killed while its shard was being written
    assert run.returncode != 0
    assert not list(tmp_path.glob("B_saved_rank*"))

    fabric = Fabric(accelerator="cpu", devices=1)
    expected = big_model()
    model = fabric.setup(
        torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS)))
    )
    remainder = fabric.load(tmp_path / "checkpoint", {"model": model})
    assert remainder["tag"] == "A"
    for (name, value), (_, loaded) in zip(
        expected.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(loaded, value), name


# ------------------------------------------------------------- the directory swap, in one process
def _write_directory(path: Path, value: float) -> None:
    tmp = path.parent / f".{path.name}.tmp-test"
    tmp.mkdir()
    save_shards({"model": {"w": torch.full((3,), value)}}, str(tmp))
    write_manifest(str(tmp), {name: checksum(str(tmp / name)) for name in files_to_record(str(tmp))})
    commit_directory(str(tmp), path)


def _read_w(path: Path) -> torch.Tensor:
    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(_OneWeight())
    fabric.load(path, {"model": model})
    return model.w.detach().clone()


class _OneWeight(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


@pytest.mark.timeout(60)
def test_commit_replaces_the_directory_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    _write_directory(path, 1.0)
    _write_directory(path, 2.0)
    assert torch.equal(_read_w(path), torch.full((3,), 2.0))
    reclaim.wait()  # the replaced version is deleted in the background
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.timeout(60)
def test_a_crash_between_the_two_renames_still_loads_the_old_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    _write_directory(path, 1.0)
    os.rename(path, tmp_path / ".ckpt.old-0123")  # the first rename happened, the second did not
    assert resolve_checkpoint_path(path) == str(tmp_path / ".ckpt.old-0123")
    assert torch.equal(_read_w(path), torch.full((3,), 1.0))
    _write_directory(path, 2.0)  # the next save cleans the leftover up
    reclaim.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.timeout(60)
def test_commit_refuses_to_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "ckpt").write_text("not a directory")
    tmp = tmp_path / ".ckpt.tmp-x"
    tmp.mkdir()
    with pytest.raises(CheckpointError, match="a file is there"):
        commit_directory(str(tmp), tmp_path / "ckpt")
    assert not tmp.exists()
    assert (tmp_path / "ckpt").read_text() == "not a directory"


@pytest.mark.timeout(60)
def test_resolve_reports_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        resolve_checkpoint_path(tmp_path / "nothing")


# ------------------------------------------------------------- optimizer state keys
@settings(max_examples=50, deadline=None)
@given(group_sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=4), data=st.data())
def test_optimizer_state_round_trips_between_index_and_name_keys(
    group_sizes: list[int], data: st.DataObject
) -> None:
    """Index keys -> name keys -> index keys gives the same state, for any groups and any subset of states."""
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in range(sum(group_sizes))]
    names = {id(p): f"layer{i}.weight" for i, p in enumerate(parameters)}
    bounds = [sum(group_sizes[:i]) for i in range(len(group_sizes) + 1)]
    optimizer = torch.optim.SGD(
        [
            {"params": parameters[a:b], "lr": 0.1 * (i + 1)}
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]
    )
    with_state = data.draw(st.lists(st.booleans(), min_size=len(parameters), max_size=len(parameters)))
    index_keyed = {
        "state": {
            i: {"momentum_buffer": torch.tensor([float(i)])} for i, has in enumerate(with_state) if has
        },
        "param_groups": optimizer.state_dict()["param_groups"],
    }

    by_name = optimizer_state_by_name(index_keyed, optimizer, names)
    assert is_name_keyed(by_name)
    assert set(by_name["state"]) == {f"layer{i}.weight" for i in index_keyed["state"]}
    assert [g["lr"] for g in by_name["param_groups"]] == [g["lr"] for g in index_keyed["param_groups"]]
    assert optimizer_state_by_name(by_name, optimizer, names) is by_name  # already keyed by name

    back = optimizer_state_by_index(by_name)
    assert not is_name_keyed(back)
    assert back["param_groups"] == index_keyed["param_groups"]
    assert back["state"].keys() == index_keyed["state"].keys()
    for i, value in index_keyed["state"].items():
        assert torch.equal(back["state"][i]["momentum_buffer"], value["momentum_buffer"])


@pytest.mark.timeout(60)
def test_optimizer_state_of_foreign_parameters_is_a_clear_error() -> None:
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    index_keyed = optimizer.state_dict()
    with pytest.raises(CheckpointError, match="Cannot match the optimizer's parameters"):
        optimizer_state_by_name(index_keyed, optimizer, names={})
