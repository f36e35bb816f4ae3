"""``fabric.plugins.collectives.TorchCollective`` on three real processes (gloo): groups, sub-groups, objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.strategies.multiprocess import read_rank_results, run_python

SCRIPT = Path(__file__).resolve().parent / "scripts" / "collectives_script.py"


@pytest.mark.timeout(150)
def test_roles_on_sub_groups_as_in_lightnings_decoupled_ppo(tmp_path: Path) -> None:
    run = run_python([str(SCRIPT), str(tmp_path)], timeout=140)
    assert run.returncode == 0, run.output
    results = read_rank_results(tmp_path, world_size=3)
    for rank, result in enumerate(results):
        assert result["rank"] == rank and result["world_size"] == 3
        assert result["group_is_process_group"]
        assert result["sum"] == 3.0 and result["max"] == 2.0
        assert result["params"] == [1.5, 2.5]
        assert "mean" in result["bad_op"] and "avg" in result["bad_op"]
        assert result["default_destroyed"]  # setup created the default group, so teardown removed it
    assert results[1]["chunk"] == {"data": [1, 2]} and results[2]["chunk"] == {"data": [3]}
    assert results[1]["trainers_sum"] == results[2]["trainers_sum"] == 30.0
    assert results[0]["gathered"] == [0, 2, 4]
