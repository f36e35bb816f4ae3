"""Two simulated nodes on one machine: two torchrun agents, one process each, on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.strategies.multiprocess import (
    SCRIPTS,
    kill_session,
    launch_env,
    read_rank_results,
    wait_until_gone,
)


@pytest.mark.timeout(120)
def test_two_nodes_under_torchrun(tmp_path: Path) -> None:
    env = launch_env()  # one fresh MASTER_PORT, passed to both agents explicitly
    port = env.pop("MASTER_PORT")
    script_args = [
        str(SCRIPTS / "train_script.py"),
        "--out",
        str(tmp_path),
        "--devices",
        "1",
        "--num-nodes",
        "2",
    ]
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                *script_args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for node in (0, 1)
    ]
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=100)[0])
    finally:
        for agent in agents:
            if agent.poll() is None:
                kill_session(agent.pid)
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(outputs)

    ranks = read_rank_results(tmp_path, world_size=2)
    for rank, result in enumerate(ranks):
        assert result["environment"] == "TorchElasticEnvironment"
        assert (result["global_rank"], result["node_rank"], result["local_rank"]) == (rank, rank, 0)
        assert result["world_size"] == 2
        assert result["ranks_identical"] is True
    assert wait_until_gone([r["pid"] for r in ranks], timeout=5) == []
