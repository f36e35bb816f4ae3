"""`fabric run`: end to end through torchrun, two simulated nodes, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fabric.environments import find_free_network_port

ROOT = Path(__file__).parent.parent
TARGET = Path(__file__).parent / "scripts" / "cli_target.py"
# The script's own arguments, passed through untouched: options torchrun would read as abbreviations
# of its own (`--log` of `--log-dir`), one of fabric's own options, a `--`.
SCRIPT_ARGS = ["an arg", "--x=1", "--log", "out.txt", "--devices", "5", "--", "--max-restarts=3"]


def _env(out: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CLI_TARGET_OUT": str(out), **extra})
    return env


def _fabric_run(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fabric.cli", "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _reports(out: Path, n: int) -> list[dict[str, Any]]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


@pytest.mark.timeout(120)
def test_run_two_devices_end_to_end(tmp_path: Path) -> None:
    process = _fabric_run(
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--precision",
        "bf16",
        str(TARGET),
        *SCRIPT_ARGS,
        # the same precision in code, spelled differently: not a contradiction
        env=_env(tmp_path, CLI_TARGET_KWARGS=json.dumps({"precision": "bf16-mixed"})),
    )
    output, _ = process.communicate(timeout=100)
    assert process.returncode == 0, output
    reports = _reports(tmp_path, 2)
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["world_size"] == 2
        assert report["strategy"] == "DDPStrategy"
        assert report["precision"] == "bf16-mixed"
        assert report["argv"] == SCRIPT_ARGS
        assert report["agree"]


@pytest.mark.timeout(120)
def test_run_two_simulated_nodes(tmp_path: Path) -> None:
    port = str(find_free_network_port())
    common = ["--accelerator", "cpu", "--devices", "1", "--num-nodes", "2", "--main-port", port]
    nodes = [
        _fabric_run(*common, "--node-rank", str(rank), str(TARGET), env=_env(tmp_path)) for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=100)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    reports = _reports(tmp_path, 2)
    assert [(r["rank"], r["node_rank"], r["world_size"]) for r in reports] == [(0, 0, 2), (1, 1, 2)]
    assert all(r["agree"] for r in reports)


@pytest.mark.timeout(120)
def test_code_that_contradicts_the_command_line_fails(tmp_path: Path) -> None:
    env = _env(tmp_path, CLI_TARGET_KWARGS=json.dumps({"precision": "16-true"}))
    process = _fabric_run(
        "--accelerator", "cpu", "--devices", "2", "--precision", "bf16-mixed", str(TARGET), env=env
    )
    output, _ = process.communicate(timeout=100)
    assert process.returncode != 0
    assert "contradicts FABRIC_PRECISION='bf16-mixed'" in output
    # the same setting in code and on the command line is fine
    env = _env(tmp_path, CLI_TARGET_KWARGS=json.dumps({"accelerator": "cpu", "devices": 2}))
    process = _fabric_run("--accelerator", "cpu", "--devices", "2", str(TARGET), env=env)
    output, _ = process.communicate(timeout=100)
    assert process.returncode == 0, output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "3x"], "--devices='3x'"),
        (["--precision", "8-bit"], "--precision='8-bit'"),
        (["--num-nodes", "0"], "--num-nodes=0"),
        (["--num-nodes", "2", "--node-rank", "2"], "--node-rank=2"),
        (["--strategy", "ddp_spawn"], "starts its own processes"),
        (["--strategy", "bogus"], "--strategy='bogus'"),
        (["--main-port", "70000"], "--main-port=70000"),
        (
            ["--num-nodes", "2", "--join-timeout", "0"],
            "--join-timeout=0.0: must be a number of seconds above 0",
        ),
        (["--main-address", ""], "--main-address=''"),
        (["--main-address", "tcp://10.0.0.1:29400"], "without spaces, scheme or port"),
        (["--accelerator", "mlu"], "invalid choice: 'mlu'"),
        (["--accelerator", "tpu"], "nothing to launch"),  # XLA under SPMD: run the script directly
    ],
)
def test_invalid_options_fail_before_launching(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fabric.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--accelerator", "cpu", *args, str(TARGET)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert "FABRIC_DEVICES" not in os.environ  # nothing was set up, nothing was launched


def test_missing_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fabric.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "nope.py")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_the_command_line_knows_every_built_in_strategy() -> None:
    """`fabric run` checks `--strategy` against a torch-free list; it must equal the registry's names."""
    from fabric.strategies.registry import STRATEGY_NAMES
    from fabric.utilities.choices import STRATEGY_NAMES as CLI_STRATEGY_NAMES

    assert tuple(STRATEGY_NAMES) == CLI_STRATEGY_NAMES
