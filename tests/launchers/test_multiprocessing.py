"""The multiprocessing launcher (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) on real processes.

One run of ``scripts/launch_fn.py`` launches every strategy name in turn, then a fork run in which a
rank raises; the tests assert on what ``fabric.launch(fn)`` returned or raised each time.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.strategies.multiprocess import SCRIPTS, run_python, wait_until_gone

pytestmark = pytest.mark.timeout(120)

NAMES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out_file = tmp_path_factory.mktemp("launch_fn") / "results.json"
    run = run_python([str(SCRIPTS / "launch_fn.py"), str(out_file), *NAMES, "raise", "unset"], timeout=110)
    assert run.returncode == 0, run.output
    return json.loads(out_file.read_text())


@pytest.mark.parametrize("name", NAMES)
def test_launch_returns_rank_zero_result_and_ranks_agree(launched: dict[str, Any], name: str) -> None:
    result = launched[name]
    assert result["returned_by"] == 0
    assert result["world_size"] == 2
    assert result["local_ranks"] == [0, 1]
    assert result["ranks_identical"]
    # Two new processes, neither of them the one that called launch.
    assert len(set(result["pids"])) == 2
    assert launched["parent_pid"] not in result["pids"]
    assert wait_until_gone(result["pids"], timeout=5) == []
    assert result["params"] == {"type": "Tensor", "numel": 178, "finite": True}
    assert result["payload_intact"]


@pytest.mark.parametrize("name", NAMES)
def test_rendezvous_on_loopback(launched: dict[str, Any], name: str) -> None:
    assert launched[name]["main_address"] == "127.0.0.1"
    assert launched[name]["env_master_addr"] == "127.0.0.1"


def test_the_rendezvous_goes_to_the_children_not_into_the_launching_process(launched: dict[str, Any]) -> None:
    """A notebook that launches twice must not carry the first run's port into the second."""
    result = launched["unset"]
    assert result["env_master_addr"] == "127.0.0.1"
    assert result["env_master_port"] is not None and int(result["env_master_port"]) > 0
    assert result["parent_env_after"] == {"MASTER_ADDR": None, "MASTER_PORT": None}


def test_a_raising_rank_fails_launch_with_its_traceback(launched: dict[str, Any]) -> None:
    failure = launched["raise"]
    assert failure["raised"] == "ProcessRaisedException"
    assert "ValueError: deliberate failure in a started rank" in failure["message"]
    assert "fail_on_rank_one" in failure["message"]
