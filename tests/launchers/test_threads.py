"""Threads per process: several processes on one node share its cores unless the user chose.

Real runs of 2 processes (gloo on 127.0.0.1); each process writes ``torch.get_num_threads()`` and
``OMP_NUM_THREADS`` as it sees them inside the run.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from fabric.utilities.threads import threads_per_process, usable_cores
from tests.strategies.multiprocess import launch_env, run_python

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from fabric import Fabric

    def report(fabric, out):
        info = {"threads": torch.get_num_threads(), "variable": os.environ.get("OMP_NUM_THREADS")}
        everyone = fabric.all_gather(torch.tensor([info["threads"]]))  # the ranks are connected
        info["gathered"] = everyone.flatten().tolist()
        with open(os.path.join(out, f"rank{fabric.global_rank}.json"), "w") as f:
            json.dump(info, f)

    if __name__ == "__main__":
        strategy, out = sys.argv[1], sys.argv[2]
        fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
        if strategy == "ddp":
            fabric.launch()
            report(fabric, out)
        else:
            fabric.launch(report, out)
    """
)


def _run(tmp_path: Path, strategy: str, user_value: str | None) -> list[dict]:
    script = tmp_path / "threads_script.py"
    script.write_text(SCRIPT)
    env = launch_env()
    env.pop("OMP_NUM_THREADS")
    if user_value is not None:
        env["OMP_NUM_THREADS"] = user_value
    run = run_python([str(script), strategy, str(tmp_path)], cwd=tmp_path, env=env, timeout=100)
    assert run.returncode == 0, run.output
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_unset_variable_gives_each_process_its_share(tmp_path: Path, strategy: str) -> None:
    expected = threads_per_process(2)
    for info in _run(tmp_path, strategy, None):
        assert info["threads"] == expected, info
        assert info["variable"] == str(expected), info
        assert info["gathered"] == [expected, expected]


@pytest.mark.timeout(120)
def test_the_users_variable_is_kept(tmp_path: Path) -> None:
    if usable_cores() < 2:
        pytest.skip("one core: the user's value cannot differ from the share")
    # A value other than the share, and no more than the cores (torch may cap the count at those).
    chosen = 1 if threads_per_process(2) > 1 else 2
    for info in _run(tmp_path, "ddp", str(chosen)):
        assert info["threads"] == chosen, info
        assert info["variable"] == str(chosen), info
