"""Every example, run as a user would (a real process, smoke-sized), with its outputs checked.

Run by `nox -s examples`. Sizes are chosen so the whole file stays within a few minutes on 2 cores,
except PPO, which trains to CartPole's solved return (bounded by --total-steps and the timeout).
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCRIPTS = [
    "train_classifier.py",
    "resume.py",
    "plot_metrics.py",
    "porting/legacy_train.py",
    "porting/fabric_train.py",
    "gan/dcgan.py",
    "rl/ppo.py",
    "rl/actor_critic.py",
    "lm/char_transformer.py",
]


def run(script: str, *args: str, cwd: Path, timeout: float = 600) -> str:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script} {args} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def column(path: Path, name: str) -> list[float]:
    with open(path, newline="") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str, tmp_path: Path) -> None:
    out = run(script, "--help", cwd=tmp_path, timeout=240)
    assert "usage:" in out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("devices", ["1", "2"])
def test_resume_example_ends_identical_after_a_crash(tmp_path: Path, devices: str) -> None:
    """README, Exact resume cites `examples/resume.py`: stopped at step 37 and run again, it ends with the
    weights of the uninterrupted run, on one process and on DDP."""
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    whole = run("resume.py", "--devices", devices, cwd=tmp_path / "whole")
    assert "stopping at step 37" in run(
        "resume.py", "--devices", devices, "--stop-at", "37", cwd=tmp_path / "cut"
    )
    resumed = run("resume.py", "--devices", devices, cwd=tmp_path / "cut")
    assert "resumed from" in resumed and "at step 30" in resumed
    checksum = [line for line in whole.splitlines() if line.startswith("done: weight checksum")]
    assert len(checksum) == 1
    assert checksum[0] in resumed.splitlines()


@pytest.mark.timeout(900)
def test_gan_trains_writes_grids_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "gan"
    stdout = run("gan/dcgan.py", "--epochs", "2", "--out", str(out), cwd=tmp_path)
    assert "epoch   2/2" in stdout
    metrics = out / "logs" / "metrics.csv"
    steps_before = len(column(metrics, "d_loss"))
    stdout = run("gan/dcgan.py", "--epochs", "3", "--resume", "--out", str(out), cwd=tmp_path)
    assert "resumed from" in stdout and "at epoch 2" in stdout
    assert "epoch   1/3" not in stdout and "epoch   3/3" in stdout
    for epoch in (1, 2, 3):
        png = out / "samples" / f"epoch_{epoch:03d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d_loss, g_loss = column(metrics, "d_loss"), column(metrics, "g_loss")
    assert len(d_loss) == steps_before * 3 // 2  # the resumed run appended its epoch to the same log
    assert all(math.isfinite(v) for v in d_loss + g_loss)
    assert column(metrics, "step") == sorted(column(metrics, "step"))
    # the chart of the GAN's log
    run("plot_metrics.py", str(metrics), "-o", str(tmp_path / "gan.png"), cwd=tmp_path)
    assert (tmp_path / "gan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(1500)
def test_ppo_solves_cartpole_on_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    # --check exits non-zero unless the greedy policy averages >= 475 over 100 episodes
    stdout = run(
        "rl/ppo.py",
        "--devices",
        "2",
        "--total-steps",
        "300000",
        "--check",
        "--out",
        str(out),
        cwd=tmp_path,
        timeout=1400,
    )
    assert "evaluation: mean return over 100 episodes" in stdout
    evaluation = column(out / "logs" / "metrics.csv", "eval_mean_return_100")
    assert evaluation[-1] >= 475.0
    returns = column(out / "logs" / "metrics.csv", "mean_return_100")
    assert returns[-1] > returns[0]


@pytest.mark.timeout(600)
def test_actor_critic_improves(tmp_path: Path) -> None:
    out = tmp_path / "ac"
    run("rl/actor_critic.py", "--updates", "300", "--out", str(out), cwd=tmp_path)
    returns = column(out / "logs" / "metrics.csv", "mean_return_20")
    assert returns[-1] > 2 * returns[0]


LM_LOSS_TARGET = 3.0  # uniform guess: ln(99) = 4.6; character frequencies alone (unigram entropy): 3.32


@pytest.mark.timeout(900)
def test_language_model_fsdp(tmp_path: Path) -> None:
    out = tmp_path / "lm"
    stdout = run(
        "lm/char_transformer.py",
        *("--devices", "2", "--steps", "150", "--dim", "64", "--layers", "2", "--log-every", "25"),
        *("--sample-length", "60", "--out", str(out)),
        cwd=tmp_path,
    )
    assert "tokens/s" in stdout and "MFU" in stdout
    assert "sample:\nThe " in stdout
    losses = column(out / "logs" / "metrics.csv", "loss")
    assert losses[-1] < LM_LOSS_TARGET < losses[0]
    assert column(out / "logs" / "metrics.csv", "device/items_per_sec")[-1] > 0
