"""Lightning's FSDP arguments on FSDP2, and meta-device init of a GPT-like model (real processes, gloo).

One launch of ``fsdp_scripts/api_checks.py`` per world size; each test asserts on what the ranks wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.strategies.fsdp_scripts.common import section_errors
from tests.strategies.multiprocess import read_rank_results, run_python

SCRIPTS = Path(__file__).resolve().parent / "fsdp_scripts"


def _run(tmp_path_factory: pytest.TempPathFactory, mode: str, world_size: int) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp(f"fsdp_api_{mode}")
    run = run_python([str(SCRIPTS / "api_checks.py"), str(out_dir), mode], timeout=240)
    assert run.returncode == 0, run.output
    results = read_rank_results(out_dir, world_size=world_size)
    assert not section_errors(results), section_errors(results)
    return results


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _run(tmp_path_factory, "basic", 2)


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _run(tmp_path_factory, "hybrid", 4)


@pytest.mark.timeout(250)
def test_gpt_in_a_module_list_keeps_its_own_init_under_empty_init(two: list[dict[str, Any]]) -> None:
    """Default wrap policy on `nn.ModuleList` blocks; `_init_weights` values equal a normal seeded build."""
    for result in two:
        gpt = result["gpt"]
        assert gpt["on_meta"]
        assert gpt["equal"], gpt["max_diff"]
        assert gpt["output_diff"] == 0.0
        assert gpt["rng_after_equal"]  # the generator continues where a normal construction leaves it
        assert gpt["units"] == 6  # the root, wte, head and the 3 blocks inside the ModuleList


@pytest.mark.timeout(250)
def test_sharding_strategies_train_like_ddp(two: list[dict[str, Any]]) -> None:
    for result in two:
        for name in ("full_shard", "shard_grad_op", "no_shard"):
            assert result["strategies"][name] < 1e-6, name


@pytest.mark.timeout(250)
def test_fsdp1_arguments_map_or_fail_clearly(two: list[dict[str, Any]]) -> None:
    options = two[0]["options"]
    assert options["grad_op_reshard"] is False
    assert options["full_reshard"] is True
    assert options["mp_param_dtype"] == "torch.bfloat16"
    assert options["bad_strategy"]["raised"] == "ValueError"
    assert "HYBRID_SHARD" in options["bad_strategy"]["message"]
    assert options["buffer_dtype"]["raised"] == "ValueError"
    assert options["fsdp1_only"]["raised"] == "ValueError"
    assert "backward_prefetch" in options["fsdp1_only"]["message"]
    assert options["unknown_kwarg"]["raised"] == "TypeError"
    assert "shard_placement_fn" in options["unknown_kwarg"]["message"]
    assert options["no_op_kwarg"]["raised"] is None
    assert options["bad_mesh"]["raised"] == "ValueError"


@pytest.mark.timeout(250)
def test_hybrid_shard_on_a_2x2_mesh_trains_like_ddp(four: list[dict[str, Any]]) -> None:
    for result in four:
        assert result["hybrid_mesh"]["shape"] == [2, 2]
        assert result["strategies"]["hybrid"] < 1e-6
        assert result["hybrid_mesh"]["gpt"]["equal"], result["hybrid_mesh"]["gpt"]["max_diff"]
