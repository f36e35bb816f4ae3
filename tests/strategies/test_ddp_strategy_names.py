"""Strategy names that re-run the script ("ddp" and its variants) train on two real processes.

``"ddp"`` itself is covered by ``test_ddp.py``; ``ddp_spawn``, ``ddp_fork`` and ``ddp_notebook`` by
``tests/launchers/test_multiprocessing.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.strategies.multiprocess import SCRIPTS, read_rank_results, run_python


@pytest.mark.timeout(90)
def test_ddp_find_unused_parameters_true_trains_a_model_with_an_unused_branch(tmp_path: Path) -> None:
    """A head that forward never uses: plain DDP would fail on the second step; this name must not."""
    script = str(SCRIPTS / "train_script.py")
    args = ["--out", str(tmp_path), "--strategy", "ddp_find_unused_parameters_true", "--unused-branch"]
    run = run_python([script, *args], timeout=80)
    assert run.returncode == 0, run.output
    for rank, result in enumerate(read_rank_results(tmp_path, world_size=2)):
        assert (result["global_rank"], result["world_size"]) == (rank, 2)
        assert result["find_unused_parameters"] is True
        assert result["ranks_identical"] is True
