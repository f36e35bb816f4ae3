"""``Fabric.save(..., async_save=True)`` under DeepSpeed ZeRO on two real processes (gloo, 127.0.0.1).

One launch of ``scripts/async_save.py`` runs every scenario; each test asserts on one part of what
the ranks wrote. The killed-write test is in ``test_checkpoint_safety.py``. Skipped when DeepSpeed is
not installed (run them with ``nox -s deepspeed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fabric.strategies.deepspeed import deepspeed_available
from tests.strategies.multiprocess import Run, launch_env, read_rank_results, run_python

pytestmark = [
    pytest.mark.deepspeed,
    pytest.mark.skipif(not deepspeed_available(), reason="DeepSpeed is not installed (nox -s deepspeed)"),
]

SCRIPTS = Path(__file__).resolve().parent / "scripts"
RUN_TIMEOUT = 480  # 2 processes, 5 engines; about 1.5 min on a quiet 2-core machine


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, list[dict[str, Any]], Path]:
    out_dir = tmp_path_factory.mktemp("ds_async")
    run = run_python(
        [str(SCRIPTS / "async_save.py"), str(out_dir)],
        timeout=RUN_TIMEOUT,
        env=launch_env(DS_ACCELERATOR="cpu"),
    )
    ranks = read_rank_results(out_dir, world_size=2)
    errors = {
        (rank, name): part["error"]
        for rank, result in enumerate(ranks)
        for name, part in result.items()
        if isinstance(part, dict) and "error" in part
    }
    assert not errors, (errors, run.output)
    return run, ranks, out_dir


@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize("stage", ["stage2", "stage3", "stage3_subgroups", "stage2_offload"])
def test_async_checkpoint_equals_the_sync_one_with_the_values_at_the_call(
    run: tuple[Run, list[dict[str, Any]], Path], stage: str
) -> None:
    _, ranks, _ = run
    zero3 = stage.startswith("stage3")
    for index, rank in enumerate(ranks):
        result = rank[stage]
        # ZeRO-3 pads the last rank's partitions (5 odd-sized parameters); the script put a NaN in each
        # padding element, as DeepSpeed's uninitialized padding holds in some runs by chance
        assert result["nan_padding"] == (5 if zero3 and index == 1 else 0), result
        assert result["sub_groups"] == {"stage3": 1, "stage3_subgroups": 2}.get(stage), result
        assert result["held"]  # nothing was written yet when training changed the state in place
        assert result["changed"]
        assert result["pending_done"]
        for name in ("sync", "async"):
            loaded = result[name]
            assert loaded["weights_equal"], (name, loaded)
            assert loaded["optimizer_equal"] and loaded["optimizer_entries"] > 0, (name, loaded)
            assert loaded["step"] == 3 and loaded["history"] == [1, 2], (name, loaded)
    # Every DeepSpeed file (each rank's optimizer partition; in stage 3 each rank's model partition)
    # and meta.pt hold the same bytes, tensor for tensor, in both checkpoints (NaN padding included).
    result = ranks[0][stage]
    assert result["file_differences"] == []
    partitions = [n for n in result["file_names"] if n.startswith("zero_pp_rank_")]
    assert len(partitions) == (4 if zero3 else 2), result["file_names"]
    assert {"checkpoint", "latest", "meta.pt", "zero_to_fp32.py", "fabric-manifest.json"} <= set(
        result["entries"]
    )
    assert result["temporaries"] == []  # no staging or temporary directory is left behind


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_a_failed_background_write_is_raised_on_every_rank_at_the_next_call(
    run: tuple[Run, list[dict[str, Any]], Path],
) -> None:
    _, ranks, _ = run
    for rank, result in enumerate(ranks):
        failure = result["failure"]
        # rank 0 its own error (a clear OSError naming the file size limit), rank 1 names rank 0's
        assert failure["raised"]["raised"] == ("OSError" if rank == 0 else "CheckpointError"), failure
        assert "File too large" in failure["raised"]["message"], failure
        assert failure["again"]["raised"] is None  # raised once; nothing is pending afterwards
        assert failure["tag"] == "old"  # the previous checkpoint is unchanged and loads
        assert failure["temporaries"] == []


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_a_failed_write_nobody_waited_for_fails_the_exit(run: tuple[Run, list[dict[str, Any]], Path]) -> None:
    process, _, out_dir = run
    assert process.returncode != 0
    assert "the background save of" in process.output and "File too large" in process.output
    assert not (out_dir / "at_exit").exists()


def test_a_config_that_selects_another_deepspeed_writer_is_refused(tmp_path: Path) -> None:
    """Only DeepSpeed's default writer (torch.save) is written in the background; another one is an error."""
    from types import SimpleNamespace

    from deepspeed.runtime.checkpoint_engine import CheckpointCommitInfo, TorchCheckpointEngine

    from fabric.checkpoint import deepspeed_async
    from fabric.checkpoint.io import CheckpointError

    class OtherWriter(TorchCheckpointEngine):
        pass

    with pytest.raises(NotImplementedError, match=r"OtherWriter.*async_save=False"):
        deepspeed_async.zipfile_serialization(SimpleNamespace(checkpoint_engine=OtherWriter()))
    engine = SimpleNamespace(checkpoint_engine=TorchCheckpointEngine())
    for serialization in (
        True,
        False,
    ):  # the background write serializes as DeepSpeed's writer is configured to
        engine.checkpoint_engine.zipfile_serialization = serialization
        assert deepspeed_async.zipfile_serialization(engine) is serialization

    # Within the block DeepSpeed's files become CPU copies under the save directory; after it, its writer is back.
    writer = engine.checkpoint_engine
    with deepspeed_async.snapshot_engine(engine, str(tmp_path)) as snapshotter:
        assert engine.checkpoint_engine is snapshotter
        snapshotter.create(CheckpointCommitInfo(tag="t", save_dir=str(tmp_path), save_latest=True))
        live = torch.zeros(3)
        snapshotter.save({"w": live}, str(tmp_path / "t" / "file.pt"))
        live.add_(1.0)
        with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
            snapshotter.save({"w": live}, str(tmp_path.parent / "elsewhere.pt"))
    assert engine.checkpoint_engine is writer
    [(relative, state)] = snapshotter.files
    assert relative == "t/file.pt" and torch.equal(state["w"], torch.zeros(3))
    assert not (tmp_path / "t").exists()  # nothing is written on the training thread
