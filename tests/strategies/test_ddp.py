"""DDP on two real processes (gloo, 127.0.0.1): training, parity with raw PyTorch, collectives.

Starting processes costs seconds (``import torch``), so one launch of ``scripts/ddp_checks.py`` checks
everything below; each test asserts on one part of what the ranks wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.strategies.multiprocess import SCRIPTS, read_rank_results, run_python

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp_checks")
    run = run_python([str(SCRIPTS / "ddp_checks.py"), str(out_dir)], timeout=110)
    assert run.returncode == 0, run.output
    return read_rank_results(Path(out_dir), world_size=2)


def test_ranks_know_who_they_are(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks):
        identity = result["identity"]
        assert (identity["global_rank"], identity["local_rank"], identity["node_rank"]) == (rank, rank, 0)
        assert identity["world_size"] == 2
        assert identity["backend"] == "gloo"
    assert ranks[0]["identity"]["pid"] != ranks[1]["identity"]["pid"]
    assert ranks[0]["identity"]["argv"] == ranks[1]["identity"]["argv"]


def test_single_node_rendezvous_stays_on_loopback(ranks: list[dict[str, Any]]) -> None:
    """No MASTER_ADDR given: the rendezvous must not listen on an interface the user did not name."""
    for result in ranks:
        assert result["identity"]["main_address"] == "127.0.0.1"
    # the launcher told the child; the strategy published the same in rank 0 (as Lightning does)
    assert ranks[0]["identity"]["env_master_addr"] == ranks[1]["identity"]["env_master_addr"] == "127.0.0.1"
    assert ranks[0]["identity"]["env_master_port"] == ranks[1]["identity"]["env_master_port"]


def test_ranks_agree_after_training(ranks: list[dict[str, Any]]) -> None:
    """Ranks start from different weights and see different data; DDP keeps them identical."""
    for result in ranks:
        assert result["training"]["ranks_identical"]
        assert result["training"]["changed"]
        assert result["training"]["finite"]


def test_bit_identical_to_raw_distributed_data_parallel(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        parity = result["parity"]
        assert parity["fabric_steps"] == parity["raw_steps"] == 8  # 64 samples / 2 ranks / batch 4
        assert parity["changed"]
        assert parity["bit_identical"], f"max abs diff {parity['max_abs_diff']}"


def test_no_backward_sync_accumulation_equals_one_big_batch(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        accumulation = result["accumulation"]
        # Inside no_backward_sync each rank kept its own gradients: sync was really skipped.
        assert accumulation["unsynced_grads_differ"] == [True, True, True]
        assert accumulation["synced_grads_identical"]
        assert accumulation["grad_allclose"], accumulation["grad_max_abs_diff"]
        assert accumulation["params_allclose"], accumulation["params_max_abs_diff"]


def test_all_reduce(ranks: list[dict[str, Any]]) -> None:
    # rank r contributes [1, -2, 3] * (r + 1)
    for result in ranks:
        c = result["collectives"]
        assert c["all_reduce_sum"] == [3.0, -6.0, 9.0]
        assert c["all_reduce_mean"] == [1.5, -3.0, 4.5]
        assert c["all_reduce_max"] == [2.0, -2.0, 6.0]
        assert c["all_reduce_min"] == [1.0, -4.0, 3.0]
        assert c["all_reduce_input_untouched"]
        assert c["all_reduce_int_mean"] == [1, 4]  # Lightning's: the mean of an integer tensor stays integer
        # issue 19 #10: the numbers and dtype Lightning's own reduction gives on the same process group
        assert c["int_mean"]["ours"] == [1, 4, -2, 7, 1]
        assert c["int_mean"]["dtype"] == "torch.int64"
        assert c["int_mean"]["lightning"] == c["int_mean"]["ours"]
        assert c["int_mean"]["lightning_dtype"] == c["int_mean"]["dtype"]
        assert c["int16"] == {
            "sum": [3, -600],
            "gather": [[1, -300], [2, -300]],
            "dtypes": ["torch.int16", "torch.int16"],
        }


def test_collectives_in_lightnings_forms(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        c = result["collectives"]
        assert c["group_sum"] == [3.0, -6.0, 9.0]
        assert c["product"] == [2.0, 8.0, 18.0]
        assert c["group_gather"] == [[0], [1]]
        assert c["sync_grads"] == [6.0]  # d/dx of sum over both ranks' 3x: the gradient comes back summed
        assert c["number_gather"] == [0.5, 1.5]


def test_all_reduce_nested_collections(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        c = result["collectives"]
        assert c["nested_sum"] == {
            "loss": 1.0,
            "list0": [1, 10],
            "list1_0": [[3.0, 3.0], [3.0, 3.0]],
            "list1_1": "text",
            "number": 14,
        }
        assert c["nested_max"] == [1, 0]


def test_all_gather(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        c = result["collectives"]
        assert c["all_gather_same"] == {"type": "Tensor", "value": [[0, 1, 2], [10, 11, 12]]}
        # Shapes (1, 2) and (2, 2): a list, one tensor per rank, and no hang.
        assert c["all_gather_ragged"] == {"type": "list", "value": [[[0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]}
        assert c["all_gather_nested"] == {"a": [0, 1], "b": [[1.0, 1.0], [1.0, 1.0, 1.0]]}


def test_broadcast(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        c = result["collectives"]
        assert c["broadcast_tensor"] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert c["broadcast_object"] == {"nested": [1, "x", [2.5, None]], "set": [1, 2], "rank": 0}
        assert c["broadcast_from_1"] == "from rank 1"


def test_barrier_waits_for_the_late_rank(ranks: list[dict[str, Any]]) -> None:
    (_, zero_left), (one_arrived, _) = ranks[0]["collectives"]["barrier"]  # rank 1 arrived 0.5 s late
    assert zero_left >= one_arrived


def test_rank_zero_first_runs_rank_zero_block_before_the_others(ranks: list[dict[str, Any]]) -> None:
    (zero_entered, zero_left), (one_entered, _) = ranks[0]["collectives"]["rank_zero_first"]
    assert zero_left - zero_entered > 0.9
    assert one_entered >= zero_left


def test_reduce_boolean_decision(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert result["collectives"]["reduce_boolean_all"] is False
        assert result["collectives"]["reduce_boolean_any"] is True


def test_property_examples_for_all_reduce_and_all_gather(ranks: list[dict[str, Any]]) -> None:
    """Hypothesis drew the same shapes and dtypes on both ranks; every result matched the expectation."""
    zero, one = ranks[0]["properties"], ranks[1]["properties"]
    assert zero["seen"] == one["seen"]
    assert len(zero["seen"]["all_reduce"]) >= 20
    assert len(zero["seen"]["all_gather"]) >= 20
    assert zero["failures"] == [], "\n".join(zero["failures"])
    assert one["failures"] == [], "\n".join(one["failures"])


def test_an_optimizer_parameter_outside_the_model_is_trained_as_ddp_trains_the_model(
    ranks: list[dict[str, Any]],
) -> None:
    """Issue 19 #4: refused before ("1 parameter(s) of SGD do not belong to the model"); Lightning accepts
    it but lets each rank's copy drift. Here it starts from rank 0's value, its gradient is averaged, and
    it matches one process training on the whole batch."""
    for result in ranks:
        extra = result["extra_parameter"]
        assert extra["temperatures"][0] == extra["temperatures"][1]
        assert extra["changed"]
        assert extra["model_close"] and extra["temperature_close"], extra
