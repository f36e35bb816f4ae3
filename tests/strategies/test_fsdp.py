"""FSDP2 on two real processes (gloo, 127.0.0.1): parity with DDP, memory, precision, accumulation, meta init.

One launch of ``fsdp_scripts/fsdp_checks.py`` runs every scenario (starting processes costs seconds);
each test asserts on one part of what the ranks wrote.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fabric import Fabric
from fabric.strategies import FSDPStrategy
from tests.strategies.fsdp_scripts.common import section_errors
from tests.strategies.multiprocess import read_rank_results, run_python

SCRIPTS = Path(__file__).resolve().parent / "fsdp_scripts"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("fsdp_checks")
    run = run_python([str(SCRIPTS / "fsdp_checks.py"), str(out_dir)], timeout=150)
    assert run.returncode == 0, run.output
    results = read_rank_results(out_dir, world_size=2)
    assert not section_errors(results), section_errors(results)
    return results


@pytest.mark.timeout(160)
def test_training_matches_ddp(ranks: list[dict[str, Any]]) -> None:
    """Same seed, same data split, SGD with momentum and clipping: FSDP ends where DDP ends."""
    for result in ranks:
        parity = result["parity"]
        assert parity["steps"] == 8
        assert parity["all_dtensor"]
        assert parity["changed"]
        assert parity["max_param_diff"] < 1e-6


@pytest.mark.timeout(160)
def test_clip_gradients_returns_the_ddp_norm(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        parity = result["parity"]
        assert parity["fsdp_norms"] == pytest.approx(parity["ddp_norms"], rel=1e-5)
        assert all(norm > 0.2 for norm in parity["ddp_norms"])  # every step was actually clipped
    assert ranks[0]["parity"]["fsdp_norms"] == ranks[1]["parity"]["fsdp_norms"]


@pytest.mark.timeout(160)
def test_each_rank_holds_about_half_of_the_parameters(ranks: list[dict[str, Any]]) -> None:
    full_bytes = ranks[0]["parity"]["full_bytes"]
    per_rank = ranks[0]["parity"]["bytes_per_rank"]
    assert sum(per_rank) == full_bytes  # no parameter is replicated
    for result, local in zip(ranks, per_rank, strict=True):
        assert result["parity"]["local_bytes"] == local
        assert 0.45 < local / full_bytes < 0.55


@pytest.mark.timeout(160)
def test_options_keep_parity(ranks: list[dict[str, Any]]) -> None:
    """Callable wrap policy, activation checkpointing, no reshard after forward, CPU offload."""
    for result in ranks:
        parity = result["parity"]
        assert parity["options_unit_count"] == 7  # root + 2 blocks + 4 linears
        assert parity["options_checkpointed"] == 2
        assert parity["options_max_param_diff"] < 1e-6
        assert parity["options_norms"] == pytest.approx(parity["ddp_norms"], rel=1e-5)


@pytest.mark.timeout(160)
def test_no_backward_sync_accumulation_equals_one_big_batch(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        accumulation = result["accumulation"]
        # Inside the context the reduce-scatter is skipped: no sharded gradient exists yet.
        assert accumulation["grad_none_while_unsynced"] == [True, True, True]
        assert accumulation["grad_allclose"], accumulation["grad_max_diff"]
        assert accumulation["param_max_diff"] < 1e-6


@pytest.mark.timeout(160)
def test_bf16_mixed_computes_in_bf16_and_keeps_fp32_shards(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        run = result["bf16_mixed"]
        assert run["all_dtensor"]
        assert run["param_dtypes"] == run["local_dtypes"] == ["torch.float32"]
        assert run["exp_avg_dtypes"] == ["torch.float32"]
        assert run["inner_output_dtype"] == "torch.bfloat16"
        assert run["output_dtype"] == "torch.float32"  # the precision hands float32 back to the loop
        assert run["losses"][-1] < 0.5 * run["losses"][0]


@pytest.mark.timeout(160)
def test_bf16_true_shards_bf16_parameters(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        run = result["bf16_true"]
        assert run["all_dtensor"]
        assert run["param_dtypes"] == run["local_dtypes"] == ["torch.bfloat16"]
        assert run["inner_output_dtype"] == "torch.bfloat16"
        assert run["losses"][-1] < 0.5 * run["losses"][0]


@pytest.mark.timeout(160)
def test_16_mixed_uses_a_sharded_grad_scaler(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        run = result["fp16_mixed"]
        assert run["scaler"] == "ShardedGradScaler"
        assert run["param_dtypes"] == ["torch.float32"]
        assert run["inner_output_dtype"] == "torch.float16"
        assert all(math.isfinite(loss) for loss in run["losses"])
        assert run["losses"][-1] < 0.5 * run["losses"][0]


@pytest.mark.timeout(160)
def test_meta_init_gives_the_values_of_a_normal_seeded_init(ranks: list[dict[str, Any]]) -> None:
    """Parameters and buffers (BatchNorm) of a meta-device model equal those of a seeded normal build."""
    for result in ranks:
        meta = result["meta_init"]
        assert meta["created_on_meta"]
        assert meta["none_meta_after_setup"]
        assert meta["keys_equal"]
        assert meta["all_equal"], meta["max_diff"]
        assert meta["output_diff"] == 0.0
        assert meta["stepped_finite"]


@pytest.mark.timeout(160)
def test_meta_init_without_reset_parameters_is_a_clear_type_error(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        error = result["meta_init"]["no_reset_parameters"]
        assert error["raised"] == "TypeError"
        assert "NoReset" in error["message"]
        assert "reset_parameters" in error["message"]
        assert "empty_init=False" in error["message"]


@pytest.mark.timeout(160)
def test_optimizer_that_already_stepped_is_refused(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        error = result["optimizer_with_state"]
        assert error["raised"] == "ValueError"
        assert "fabric.load" in error["message"]


# ------------------------------------------------------------------ in-process: no processes started
@pytest.mark.timeout(60)
def test_fsdp_name_builds_the_fsdp_strategy() -> None:
    fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=2)
    assert isinstance(fabric.strategy, FSDPStrategy)
    assert fabric.strategy.state_dict_type == "sharded"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"state_dict_type": "local"}, ValueError, "state_dict_type='local'"),
        ({"auto_wrap_policy": {int}}, TypeError, "auto_wrap_policy"),
        ({"activation_checkpointing_policy": 3}, TypeError, "activation_checkpointing_policy"),
    ],
)
def test_bad_arguments_fail_before_launch(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        FSDPStrategy(**kwargs)
