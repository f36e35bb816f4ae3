"""`fabric run` on one node: the launcher starts the workers itself (fabric/launchers/direct.py).

Real processes on 127.0.0.1: the launcher must not import torch, must give every worker the variables
torchrun gives, forward signals, stop the run when one worker fails, and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabric.environments import find_free_network_port
from tests.strategies.multiprocess import is_alive, launch_env, wait_until_gone

TARGET = Path(__file__).parents[1] / "scripts" / "direct_target.py"
#: values that differ between two launches by nature (a fresh port, a fresh temporary directory), or
#: on purpose (fabric's launcher has no agent store: rank 0 hosts it)
_DIFFERENT_VALUES = {"MASTER_PORT", "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_USE_AGENT_STORE"}


def _env() -> dict[str, str]:
    env = launch_env()
    env.pop("OMP_NUM_THREADS")  # the launchers' own default is part of what is compared
    env.pop("MASTER_PORT")  # each launcher chooses one
    return env


def _start(out: Path, mode: str, *launcher: str) -> subprocess.Popen:
    command = list(launcher) or ["-m", "fabric.cli", "run", "--accelerator", "cpu", "--devices", "2"]
    return subprocess.Popen(
        [sys.executable, *command, str(TARGET), str(out), mode],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 90) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(
            f"the launch did not end within {timeout} s:\n{process.communicate()[0]}"
        ) from None


def _worker_pids(out: Path, process: subprocess.Popen, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    paths = [out / "pid0", out / "pid1"]
    while not all(path.exists() and path.read_text() for path in paths):
        if time.monotonic() > deadline or (process.poll() is not None and not paths[0].exists()):
            process.kill()
            raise AssertionError(f"the workers never started; output:\n{process.communicate()[0]}")
        time.sleep(0.05)
    return [int(path.read_text()) for path in paths]


def _assert_gone(pids: list[int]) -> None:
    left = wait_until_gone(pids, timeout=10)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"workers {left} outlived the launcher"


@pytest.mark.timeout(120)
def test_the_launcher_process_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from fabric.cli import main\n"
        "try:\n"
        f"    main(['run', '--accelerator', 'cpu', '--devices', '2', {str(TARGET)!r}, {str(tmp_path)!r}, 'env'])\n"
        "except SystemExit as end:\n"
        "    print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'), end.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=90
    )
    assert done.stdout.strip() == "[] 0", f"exit code {done.returncode}:\n{done.stdout}{done.stderr}"
    assert (tmp_path / "env1.json").exists()  # the workers did run


@pytest.mark.timeout(180)
def test_workers_see_the_variables_torchrun_gives(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "fabric", tmp_path / "torchrun"
    ours.mkdir()
    theirs.mkdir()
    assert _start(ours, "env").wait(timeout=90) == 0
    torchrun = (
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={find_free_network_port()}",
    )
    output = _finish(_start(theirs, "env", *torchrun))
    for rank in (0, 1):
        # the FABRIC_* variables carry the command line's options to `Fabric()`
        fabric_env = {
            name: value
            for name, value in json.loads((ours / f"env{rank}.json").read_text()).items()
            if not name.startswith("FABRIC_")
        }
        torchrun_env = json.loads((theirs / f"env{rank}.json").read_text())
        assert sorted(fabric_env) == sorted(torchrun_env), output
        assert fabric_env["RANK"] == fabric_env["LOCAL_RANK"] == str(rank)
        assert fabric_env["OMP_NUM_THREADS"] == "1"
        differ = {name for name in fabric_env if fabric_env[name] != torchrun_env[name]}
        assert differ <= _DIFFERENT_VALUES, {name: (fabric_env[name], torchrun_env[name]) for name in differ}
        assert fabric_env["TORCHELASTIC_USE_AGENT_STORE"] == "False"
    assert json.loads((ours / "env0.json").read_text())["MASTER_PORT"] != "0"


@pytest.mark.timeout(120)
def test_a_plain_torchrun_script_meets_through_rank_zero(tmp_path: Path) -> None:
    """`init_process_group()` with env:// and no agent store: rank 0 hosts the store, both meet."""
    process = _start(tmp_path, "dist")
    output = _finish(process)
    assert process.returncode == 0, output
    assert [(tmp_path / f"sum{rank}").read_text() for rank in (0, 1)] == ["3.0", "3.0"]


@pytest.mark.timeout(120)
def test_a_failing_rank_stops_the_run_with_its_code(tmp_path: Path) -> None:
    process = _start(tmp_path, "fail")
    pids = _worker_pids(tmp_path, process)
    output = _finish(process, timeout=60)  # rank 0 would sleep 120 s: the launcher must stop it
    assert process.returncode == 3, output
    assert f"rank 1 (pid {pids[1]}) exited with code 3" in output
    _assert_gone(pids)


@pytest.mark.timeout(120)
def test_a_rank_killed_by_a_signal_is_reported(tmp_path: Path) -> None:
    process = _start(tmp_path, "sigkill")
    pids = _worker_pids(tmp_path, process)
    output = _finish(process, timeout=60)
    assert process.returncode == 128 + signal.SIGKILL, output
    assert "rank 1" in output and "was killed by signal SIGKILL" in output
    _assert_gone(pids)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_signals_to_the_launcher_reach_every_worker(tmp_path: Path, signum: signal.Signals) -> None:
    process = _start(tmp_path, "signal")
    pids = _worker_pids(tmp_path, process)
    # the workers installed their handlers before writing their pids, the launcher before starting them
    process.send_signal(signum)
    output = _finish(process, timeout=60)
    assert process.returncode == 0, output
    assert [(tmp_path / f"signal{rank}").read_text() for rank in (0, 1)] == [signum.name] * 2, output
    _assert_gone(pids)


@pytest.mark.timeout(120)
def test_workers_die_with_the_launcher(tmp_path: Path) -> None:
    process = _start(tmp_path, "sleep")
    pids = _worker_pids(tmp_path, process)
    process.kill()
    process.communicate()
    _assert_gone(pids)
    assert not any(is_alive(pid) for pid in pids)
