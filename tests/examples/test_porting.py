"""The porting guide's promise: the fabric port trains to the same weights as the legacy script.

Both scripts run as real processes (one process, then DDP on 2 processes over gloo: torchrun for the
legacy script, fabric's own launcher for the port) and their final checkpoints are compared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fabric import Fabric
from fabric.environments import find_free_network_port as free_port

ROOT = Path(__file__).resolve().parents[2]
PORTING = ROOT / "examples" / "porting"


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    assert "loss" in result.stdout


def _port_weights(path: Path) -> dict[str, torch.Tensor]:
    remainder = Fabric(accelerator="cpu").load(path)
    return remainder["model"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("devices", [1, 2])
def test_port_matches_legacy(tmp_path: Path, devices: int) -> None:
    common = ["--epochs", "2", "--seed", "0"]
    if devices == 1:
        legacy = [sys.executable, str(PORTING / "legacy_train.py")]
    else:
        legacy = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "--", str(PORTING / "legacy_train.py"),
        ]  # fmt: skip
    _run([*legacy, *common, "--out", str(tmp_path / "legacy")], tmp_path)
    port = [
        sys.executable,
        str(PORTING / "fabric_train.py"),
        "--accelerator",
        "cpu",
        "--devices",
        str(devices),
    ]
    _run([*port, *common, "--out", str(tmp_path / "port")], tmp_path)

    expected = torch.load(tmp_path / "legacy" / "checkpoint.pt", weights_only=True)["model"]
    actual = _port_weights(tmp_path / "port" / "checkpoint.pt")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    # the port logged one CSV row per epoch, and training made progress
    rows = (tmp_path / "port" / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,step"
    assert len(rows) == 3
    assert float(rows[2].split(",")[1]) < float(rows[1].split(",")[1])


@pytest.mark.timeout(300)
def test_lightning_script_runs_with_only_its_import_changed(tmp_path: Path) -> None:
    pytest.importorskip("lightning.fabric")
    original = Path(__file__).parent / "scripts" / "lightning_fabric_script.py"
    source = original.read_text()
    ported = tmp_path / "ported.py"
    ported.write_text(source.replace("from lightning.fabric", "from fabric"))
    assert ported.read_text().count("from fabric") == 2  # the only change

    outputs = {}
    for name, script in (("lightning", original), ("fabric", ported)):
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name)],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
        outputs[name] = [
            line for line in result.stdout.splitlines() if line.startswith(("epoch", "restored"))
        ]
    assert len(outputs["fabric"]) == 4
    assert outputs["fabric"] == outputs["lightning"]
    logs = {name: (tmp_path / name / "run" / "version_0" / "metrics.csv").read_text() for name in outputs}
    assert len(logs["fabric"].splitlines()) == 25
    assert logs["fabric"] == logs["lightning"]
