"""Buffers under FSDP (BatchNorm's running statistics), on two real processes (gloo, 127.0.0.1).

FSDP2 shards parameters only, so each rank's buffers drift apart with its data, and a sharded checkpoint
kept an arbitrary rank's copy. DDP broadcasts rank 0's buffers before every forward; FSDPStrategy does it
at setup and before every save (not per step): the checkpoint holds rank 0's statistics, and after a save
every rank evaluates like rank 0 (see ``fabric/strategies/_buffers.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.strategies.multiprocess import read_rank_results, run_python

SCRIPTS = Path(__file__).resolve().parent / "fsdp_scripts"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("buffer_checks")
    run = run_python([str(SCRIPTS / "buffer_checks.py"), str(out_dir)], timeout=200)
    assert run.returncode == 0, run.output
    return read_rank_results(out_dir, world_size=2)


@pytest.mark.timeout(240)
def test_setup_gives_every_rank_rank_zeros_buffers(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["after_setup"] == ranks[1]["after_setup"] == [1.0] * 4


@pytest.mark.timeout(240)
def test_a_save_keeps_rank_zeros_statistics_and_every_rank_evaluates_like_rank_zero(
    ranks: list[dict[str, Any]],
) -> None:
    # each rank trained on its own data: the statistics differ before the save (no per-step sync)
    assert ranks[0]["before_save"] != ranks[1]["before_save"]
    rank0 = ranks[0]["before_save"]
    assert ranks[1]["rank0_before_save"] == rank0
    assert ranks[0]["after_save"] == ranks[1]["after_save"] == rank0
    assert ranks[0]["eval_logits"] == ranks[1]["eval_logits"]
    assert ranks[0]["loaded"] == ranks[1]["loaded"] == rank0
