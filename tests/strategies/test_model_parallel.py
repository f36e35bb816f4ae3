"""ModelParallelStrategy on real processes: tensor parallel on 2 (tp=2) and a 2 x 2 mesh on 4 (dp=2, tp=2).

Each launch of ``fsdp_scripts/model_parallel_checks.py`` checks forward, backward and one step
against the unsharded model, meta-device init, the mesh and the data split, and writes a sharded
checkpoint; this process then loads that checkpoint into a plain model (a layout change).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fabric import Fabric
from fabric.strategies import ModelParallelStrategy
from tests.strategies.fsdp_scripts.common import FeedForward, compare_state, section_errors
from tests.strategies.multiprocess import read_rank_results, run_python

SCRIPTS = Path(__file__).resolve().parent / "fsdp_scripts"


def _run(tmp_path_factory: pytest.TempPathFactory, dp: int, tp: int) -> tuple[Path, list[dict[str, Any]]]:
    out_dir = tmp_path_factory.mktemp(f"model_parallel_{dp}x{tp}")
    run = run_python([str(SCRIPTS / "model_parallel_checks.py"), str(out_dir), str(dp), str(tp)], timeout=170)
    assert run.returncode == 0, run.output
    ranks = read_rank_results(out_dir, world_size=dp * tp)
    assert not section_errors(ranks), section_errors(ranks)
    return out_dir, ranks


@pytest.fixture(scope="module", params=[(1, 2), (2, 2)], ids=["tp2", "dp2xtp2"])
def mesh_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]], int, int]:
    dp, tp = request.param
    return (*_run(tmp_path_factory, dp, tp), dp, tp)


@pytest.mark.timeout(200)
def test_forward_backward_and_step_equal_the_unsharded_model(
    mesh_run: tuple[Path, list[dict[str, Any]], int, int],
) -> None:
    _, ranks, _, _ = mesh_run
    for result in ranks:
        equivalence = result["equivalence"]
        assert equivalence["output_diff"] < 1e-6
        assert equivalence["grad_diff"] < 1e-6
        assert equivalence["param_diff_after_step"] < 1e-6


@pytest.mark.timeout(200)
def test_linears_are_sharded_column_and_row_wise(
    mesh_run: tuple[Path, list[dict[str, Any]], int, int],
) -> None:
    _, ranks, dp, tp = mesh_run
    for result in ranks:
        placements = result["equivalence"]["placements"]
        # The tensor-parallel placement is the last mesh dimension.
        assert placements["w1.weight"][-1] == "S(0)"  # column-wise: output features split
        assert placements["w2.weight"][-1] == "S(1)"  # row-wise: input features split
        assert placements["w2.bias"][-1] == "R"
        shapes = result["equivalence"]["local_shapes"]
        assert shapes["w1.weight"] == [16 // tp // dp, 8]
        assert shapes["w2.weight"] == [6 // dp, 16 // tp]


@pytest.mark.timeout(200)
def test_meta_init_gives_the_values_of_a_normal_seeded_init(
    mesh_run: tuple[Path, list[dict[str, Any]], int, int],
) -> None:
    _, ranks, _, _ = mesh_run
    for result in ranks:
        meta = result["meta_init"]
        assert meta["created_on_meta"]
        assert meta["all_equal"], meta["max_diff"]
        assert meta["no_reset_parameters"]["raised"] == "TypeError"
        assert "reset_parameters" in meta["no_reset_parameters"]["message"]


@pytest.mark.timeout(200)
def test_mesh_names_and_data_split(mesh_run: tuple[Path, list[dict[str, Any]], int, int]) -> None:
    _, ranks, dp, tp = mesh_run
    for rank, result in enumerate(ranks):
        mesh = result["mesh_and_data"]
        assert mesh["mesh_dim_names"] == ["data_parallel", "tensor_parallel"]
        assert mesh["mesh_shape"] == [dp, tp]
        assert mesh["sampler_kwargs"] == {"num_replicas": dp, "rank": rank // tp}
    # Ranks of one tensor-parallel group see the same batches; data-parallel groups split the data.
    samples = [result["mesh_and_data"]["samples"] for result in ranks]
    for group in range(dp):
        assert all(samples[group * tp + i] == samples[group * tp] for i in range(tp))
    seen = sorted(x for group in range(dp) for batch in samples[group * tp] for x in batch)
    assert seen == [float(i) for i in range(8)]


@pytest.mark.timeout(200)
def test_plain_fabric_loads_the_sharded_checkpoint(
    mesh_run: tuple[Path, list[dict[str, Any]], int, int],
) -> None:
    out_dir, _, _, _ = mesh_run
    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(999)
    model = FeedForward()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(out_dir / "tp_checkpoint", state)
    result = compare_state(model, optimizer, torch.load(out_dir / "tp_reference.pt", weights_only=True))
    assert result["model_diff"] == 0.0
    assert result["exp_avg_diff"] == 0.0
    assert result["steps_equal"]
    assert state["step"] == 3


# ------------------------------------------------------------------ in-process: no processes started
def _identity(model: torch.nn.Module, mesh: Any) -> torch.nn.Module:
    return model


@pytest.mark.timeout(60)
def test_mesh_sizes_must_multiply_to_the_world_size() -> None:
    with pytest.raises(ValueError, match="product is 2"):
        Fabric(accelerator="cpu", strategy=ModelParallelStrategy(_identity, 2, 2), devices=2)


@pytest.mark.timeout(60)
def test_auto_sizes_use_nodes_and_devices() -> None:
    fabric = Fabric(accelerator="cpu", strategy=ModelParallelStrategy(_identity), devices=2)
    assert fabric.strategy.distributed_sampler_kwargs == {"num_replicas": 1, "rank": 0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((None,), TypeError, "parallelize_fn"),
        ((_identity, 0, 2), ValueError, "data_parallel_size=0"),
        ((_identity, 1, "two"), ValueError, "tensor_parallel_size='two'"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[Any, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ModelParallelStrategy(*args)
