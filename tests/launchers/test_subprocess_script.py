"""The subprocess launcher (``strategy="ddp"``): re-running the user's command, and failing cleanly.

Every test starts real processes (gloo on 127.0.0.1, a fresh port each run) and checks afterwards
that no process of the run is left.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.strategies.multiprocess import (
    SCRIPTS,
    Run,
    read_rank_results,
    run_python,
    wait_until_gone,
)

# Arguments the children must see exactly as the first process did.
ARGS_WITH_SPACES = ["two words", "--flag=a b", "", "tab\tand 'quotes' \"too\""]
# Only starting the processes is under test here; training under "ddp" is tested in tests/strategies.
NO_TRAINING = ["--steps", "0"]


def _assert_same_command(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    assert (zero["global_rank"], one["global_rank"]) == (0, 1)
    assert zero["world_size"] == one["world_size"] == 2
    assert zero["script"] == one["script"]
    assert zero["argv"] == one["argv"]
    assert zero["extra"] == one["extra"] == ARGS_WITH_SPACES
    assert one["argv_of_rank_zero"] == zero["argv"]  # broadcast from rank 0: the ranks are connected
    assert zero["pid"] != one["pid"]


@pytest.mark.timeout(90)
def test_script_file(tmp_path: Path) -> None:
    """``python script.py ARGS`` from the script's own folder."""
    run = run_python(
        ["train_script.py", "--out", str(tmp_path), *NO_TRAINING, *ARGS_WITH_SPACES], cwd=SCRIPTS, timeout=80
    )
    assert run.returncode == 0, run.output
    ranks = read_rank_results(tmp_path, world_size=2)
    _assert_same_command(ranks)
    assert Path(ranks[0]["script"]).resolve() == (SCRIPTS / "train_script.py").resolve()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("module", "file"),
    [("my_project.training.train", "train.py"), ("my_project.training", "__main__.py")],
    ids=["module", "package-main"],
)
def test_module_in_a_package(tmp_path: Path, module: str, file: str) -> None:
    """``python -m package.module`` (or a package's ``__main__``): the children run the same module."""
    package = tmp_path / "my_project" / "training"
    package.mkdir(parents=True)
    (tmp_path / "my_project" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    shutil.copy(SCRIPTS / "train_script.py", package / file)
    out = tmp_path / "out"
    out.mkdir()
    run = run_python(
        ["-m", module, "--out", str(out), *NO_TRAINING, *ARGS_WITH_SPACES], cwd=tmp_path, timeout=80
    )
    assert run.returncode == 0, run.output
    ranks = read_rank_results(out, world_size=2)
    _assert_same_command(ranks)
    main_module = module if file == "train.py" else f"{module}.__main__"
    assert ranks[0]["main_module"] == ranks[1]["main_module"] == main_module


@pytest.mark.timeout(90)
def test_script_in_a_subfolder_given_as_a_relative_path(tmp_path: Path) -> None:
    folder = tmp_path / "sub folder" / "nested"
    folder.mkdir(parents=True)
    shutil.copy(SCRIPTS / "train_script.py", folder / "train.py")
    out = tmp_path / "out"
    out.mkdir()
    relative = str(Path("sub folder") / "nested" / "train.py")
    run = run_python([relative, "--out", str(out), *NO_TRAINING, *ARGS_WITH_SPACES], cwd=tmp_path, timeout=80)
    assert run.returncode == 0, run.output
    ranks = read_rank_results(out, world_size=2)
    _assert_same_command(ranks)
    assert Path(ranks[1]["script"]).resolve() == (folder / "train.py").resolve()


# ---------------------------------------------------------------------------------------- failures
def _run_failure(tmp_path: Path, mode: str, victim: int) -> tuple[Run, list[int], float]:
    run = run_python([str(SCRIPTS / "fail_script.py"), mode, str(victim), str(tmp_path)], timeout=80)
    pids = [int((tmp_path / f"pid{rank}").read_text()) for rank in range(2)]
    failed_at = (
        float((tmp_path / "failed_at").read_text()) if (tmp_path / "failed_at").exists() else run.started
    )
    return run, pids, failed_at


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", [1, 0], ids=["child-rank", "rank-zero"])
def test_a_rank_killed_mid_training_stops_the_whole_run(tmp_path: Path, victim: int) -> None:
    run, pids, killed_at = _run_failure(tmp_path, "kill", victim)
    assert run.returncode != 0, run.output
    if victim == 0:
        assert run.returncode == -signal.SIGKILL
    else:
        assert "local rank 1" in run.output and "exited with code -9" in run.output
    assert run.ended - killed_at < 30, run.output
    assert wait_until_gone(pids, timeout=5) == [], run.output


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", [1, 0], ids=["child-rank", "rank-zero"])
def test_a_rank_that_raises_stops_the_whole_run_and_shows_its_traceback(tmp_path: Path, victim: int) -> None:
    run, pids, raised_at = _run_failure(tmp_path, "raise", victim)
    assert run.returncode != 0, run.output
    assert "Traceback (most recent call last)" in run.output
    assert f"RuntimeError: deliberate failure on rank {victim} at step 5" in run.output
    if victim == 0:
        # Rank 1 was stopped by the launcher; it must not be reported as the one that failed.
        assert "[fabric] local rank 1" not in run.output, run.output
    assert run.ended - raised_at < 30, run.output
    assert wait_until_gone(pids, timeout=5) == [], run.output


@pytest.mark.timeout(90)
def test_a_collective_one_rank_never_reaches_fails_after_the_timeout(tmp_path: Path) -> None:
    run, pids, _ = _run_failure(tmp_path, "timeout", victim=1)
    assert run.returncode == 0, run.output
    outcome = json.loads((tmp_path / "timeout0.json").read_text())
    assert outcome["type"] == "CollectiveError", outcome
    assert "`all_reduce`" in outcome["error"]
    assert "0:00:20" in outcome["error"]  # the configured timeout, named in the message
    assert 19.5 < outcome["seconds"] < 60
    assert wait_until_gone(pids, timeout=5) == []


CHDIR_SCRIPT = """
import json, os, sys
from fabric import Fabric

os.chdir("work")  # relative, before launch: the other rank must start where this one did
fabric = Fabric(accelerator="cpu", devices=2)
fabric.launch()
with open(f"rank{fabric.global_rank}.json", "w") as f:
    json.dump({"cwd": os.getcwd(), "argv": sys.argv[1:]}, f)
"""


@pytest.mark.timeout(90)
def test_a_script_that_changes_directory_before_launch(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "train.py").write_text(CHDIR_SCRIPT)
    run = run_python(["train.py", "--log", "x"], cwd=tmp_path, timeout=80)
    assert run.returncode == 0, run.output
    ranks = read_rank_results(tmp_path / "work", world_size=2)
    assert ranks[0] == ranks[1] == {"cwd": str((tmp_path / "work").resolve()), "argv": ["--log", "x"]}
