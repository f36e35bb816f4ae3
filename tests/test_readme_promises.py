"""README promises that no other test file pinned: each test names the README sentence it holds to.

Every test here is small and runs on one process; a promise about several processes lives beside the
multi-process tests of its part.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from fabric import Fabric, seed_everything
from fabric.checkpoint import CheckpointError, reclaim
from fabric.checkpoint.consolidate import consolidate
from fabric.checkpoint.sharded import MANIFEST_FILE
from fabric.strategies.single_device import SingleDeviceStrategy
from fabric.utilities.data import prepare_dataloader


class _ShardedSingleDevice(SingleDeviceStrategy):
    """One process that writes the sharded directory layout (what FSDP writes), without a process group."""

    @property
    def checkpoint_layout(self) -> Literal["file", "sharded"]:
        return "sharded"


def _sharded_fabric() -> Fabric:
    return Fabric(accelerator="cpu", devices=1, strategy=_ShardedSingleDevice())


def _model_and_optimizer(fabric: Fabric, seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    module = torch.nn.Linear(4, 3)
    return fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))


# ------------------------------------------------------------------------------------------ Checkpoints
@pytest.mark.timeout(60)
def test_a_directory_without_manifest_loads_with_a_warning_that_it_cannot_be_verified(tmp_path: Path) -> None:
    """README, Checkpoints: "A directory without a manifest (written by an older version or by
    `torch.distributed.checkpoint` directly) loads with a warning that it cannot be verified." The same
    for `fabric consolidate`."""
    fabric = _sharded_fabric()
    model, optimizer = _model_and_optimizer(fabric, seed=1)
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "step": 7})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / "ckpt" / MANIFEST_FILE).unlink()

    target, target_optimizer = _model_and_optimizer(fabric, seed=2)
    with pytest.warns(UserWarning, match="cannot be verified"):
        remainder = fabric.load(tmp_path / "ckpt", {"model": target, "optimizer": target_optimizer})
    assert remainder == {"step": 7}
    assert all(torch.equal(target.state_dict()[k], v) for k, v in saved.items())

    with pytest.warns(UserWarning, match="cannot be verified"):
        out = consolidate(tmp_path / "ckpt", tmp_path / "one.pt")
    merged = torch.load(out, weights_only=True)
    assert all(torch.equal(merged["model"][k], v) for k, v in saved.items())


@pytest.mark.timeout(60)
def test_a_directory_with_its_manifest_loads_without_that_warning(tmp_path: Path) -> None:
    """The counterpart: the warning above is not printed for every directory (it would then say nothing)."""
    fabric = _sharded_fabric()
    model, optimizer = _model_and_optimizer(fabric, seed=1)
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fabric.load(tmp_path / "ckpt", {"model": model, "optimizer": optimizer})
    assert not [w for w in caught if "cannot be verified" in str(w.message)]


@pytest.mark.timeout(60)
def test_a_sharded_save_to_a_remote_path_is_a_clear_error(tmp_path: Path) -> None:
    """README, Storage plugins: "Sharded directories are written to a local or mounted file system only
    (a remote path is a clear error)"; the error names the path and the fix, and nothing is written."""
    fsspec = pytest.importorskip("fsspec")
    fabric = _sharded_fabric()
    model, optimizer = _model_and_optimizer(fabric, seed=1)
    url = f"memory://{tmp_path.name}/ckpt"
    with pytest.raises(CheckpointError, match=r"memory://.*is remote.*state_dict_type='full'"):
        fabric.save(url, {"model": model, "optimizer": optimizer})
    assert not fsspec.filesystem("memory").exists(f"/{tmp_path.name}")
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_an_object_store_gets_one_put_of_the_finished_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """README, Storage plugins: "the checkpoint is serialized locally first, then uploaded with one `put`
    on object stores (S3, GCS, Azure make an object visible only when complete: atomic)". The store is
    fsspec's in-memory file system registered under the object store's protocol, recording its calls."""
    pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFileSystem

    calls: list[tuple[str, str]] = []

    class RecordingObjectStore(MemoryFileSystem):
        store: dict[str, Any] = {}  # fsspec's class-level store: this class's own
        pseudo_dirs = [""]

        def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
            assert os.path.getsize(lpath) > 0  # the whole checkpoint exists locally before the upload
            calls.append(("put", rpath.split("://")[-1]))
            super().put_file(lpath, rpath, **kwargs)

        def mv(self, path1: str, path2: str, **kwargs: Any) -> None:
            calls.append(("mv", path2.split("://")[-1]))
            super().mv(path1, path2, **kwargs)

    RecordingObjectStore.protocol = (protocol,)
    from fsspec.registry import _registry

    monkeypatch.setitem(_registry, protocol, RecordingObjectStore)
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = _model_and_optimizer(fabric, seed=3)
    url = f"{protocol}://bucket/{tmp_path.name}/ckpt.pt"
    fabric.save(url, {"model": model, "optimizer": optimizer, "step": 5})
    assert calls == [("put", f"bucket/{tmp_path.name}/ckpt.pt")]  # one put, to the final name
    target, target_optimizer = _model_and_optimizer(fabric, seed=4)
    assert fabric.load(url, {"model": target, "optimizer": target_optimizer}) == {"step": 5}
    assert torch.equal(target.weight, model.weight)


# ------------------------------------------------------------------------------------------ Differences
def test_a_seed_that_int_cannot_convert_is_a_value_error_naming_it() -> None:
    """README, Differences: "a non-integer seed that `int()` cannot convert is a `ValueError` naming the
    value"; one that `int()` converts is accepted, as in Lightning."""
    with pytest.raises(ValueError, match=r"seed='forty-two'"):
        seed_everything("forty-two", verbose=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"seed=\[1\]"):
        Fabric.seed_everything([1], verbose=False)  # type: ignore[arg-type]
    assert seed_everything("42", verbose=False) == 42  # type: ignore[arg-type]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_random_sampler_with_replacement_and_num_samples_keeps_its_meaning_under_ddp(rank: int) -> None:
    """README, Differences: "A `RandomSampler` with replacement or a `num_samples` keeps its meaning
    (Lightning replaces it by a plain shuffle)." Two ranks share `num_samples` draws with replacement
    (30 draws from 10 items: repeats are certain), not one permutation of the 10 items."""
    dataset = TensorDataset(torch.arange(10))

    def drawn(rank: int) -> list[int]:
        seed_everything(3, verbose=False)
        sampler = RandomSampler(dataset, replacement=True, num_samples=30)
        loader = DataLoader(dataset, sampler=sampler, batch_size=5)
        prepared = prepare_dataloader(loader, {"num_replicas": 2, "rank": rank}, global_rank=rank)
        return [int(i) for (batch,) in prepared for i in batch]

    mine, other = drawn(rank), drawn(1 - rank)
    assert len(mine) == len(other) == 15  # half of num_samples each, not half of the dataset
    assert len(set(mine + other)) < 30  # with replacement
    assert drawn(rank) == mine  # the same seed gives the same draws


def test_a_random_sampler_with_num_samples_and_no_replacement_keeps_its_length() -> None:
    dataset = TensorDataset(torch.arange(10))
    seed_everything(3, verbose=False)
    loader = DataLoader(dataset, sampler=RandomSampler(dataset, num_samples=4), batch_size=1)
    per_rank = [
        [
            int(i)
            for (batch,) in prepare_dataloader(loader, {"num_replicas": 2, "rank": r}, global_rank=r)
            for i in batch
        ]
        for r in (0, 1)
    ]
    assert [len(p) for p in per_rank] == [2, 2]
    assert len(set(per_rank[0] + per_rank[1])) == 4  # no replacement: four different items


# ------------------------------------------------------------------------------------------ Sharded training
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mixed_precision": "keep_low_precision_grads"}, "keep_low_precision_grads.*no equivalent"),
        ({"sync_module_states": True}, "sync_module_states=True.*seed_everything"),
        ({"param_init_fn": "a function"}, "param_init_fn=.*empty_init=True"),
        ({"forward_prefetch": True}, "forward_prefetch=True.*FSDP1"),
    ],
)
def test_fsdp1_only_options_say_what_to_do_instead(kwargs: dict[str, Any], message: str) -> None:
    """README, Sharded training: "`buffer_dtype`/`keep_low_precision_grads` have no FSDP2 equivalent: error";
    "FSDP1-only options (`backward_prefetch`, `sync_module_states`, `param_init_fn`, ...) raise an error that
    says what to do instead" (buffer_dtype and backward_prefetch are in tests/strategies/test_fsdp_options.py)."""
    from torch.distributed.fsdp import MixedPrecision

    from fabric.strategies import FSDPStrategy

    if kwargs.get("mixed_precision") == "keep_low_precision_grads":
        kwargs = {"mixed_precision": MixedPrecision(keep_low_precision_grads=True)}
    if kwargs.get("param_init_fn") == "a function":
        kwargs = {"param_init_fn": lambda module: None}
    with pytest.raises(ValueError, match=message):
        FSDPStrategy(**kwargs)


# ------------------------------------------------------------------------------------------ Logging
def test_csv_file_is_the_one_lightnings_csv_logger_writes(tmp_path: Path) -> None:
    """README, Logging: "a header row with every metric name and `step`, sorted by name (the same file
    Lightning's `CSVLogger` writes), then one row per `log_dict` call, with empty cells for metrics not
    logged at that step. A new metric name widens the header"."""
    lightning_loggers = pytest.importorskip("lightning.fabric.loggers")
    from fabric.loggers import CSVLogger

    for cls, root in ((lightning_loggers.CSVLogger, "theirs"), (CSVLogger, "ours")):
        logger = cls(tmp_path / root, name="exp", flush_logs_every_n_steps=2)
        logger.log_metrics({"zeta": 1.0, "alpha": torch.tensor(0.5)}, step=0)
        logger.log_metrics({"zeta": 2.0}, step=1)  # flushed here: the next new name rewrites the header
        logger.log_metrics({"beta": 3, "alpha": 0.25}, step=2)
        logger.log_metrics({"zeta": 0.125}, step=3)
        logger.finalize("success")
    ours = (tmp_path / "ours" / "exp" / "version_0" / "metrics.csv").read_text()
    assert ours == (tmp_path / "theirs" / "exp" / "version_0" / "metrics.csv").read_text()
    assert ours.splitlines()[0] == "alpha,beta,step,zeta"


def test_a_row_logged_without_step_is_numbered_by_its_call(tmp_path: Path) -> None:
    """README, Logging (a deliberate difference): without `step`, a row gets the number of rows logged
    before it; Lightning's writer restarts that count after every flush (step 0 again)."""
    from fabric.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="exp", flush_logs_every_n_steps=2)
    for value in range(5):
        logger.log_metrics({"x": float(value)})
    logger.finalize("success")
    lines = (tmp_path / "exp" / "version_0" / "metrics.csv").read_text().splitlines()
    assert lines == ["step,x", "0,0.0", "1,1.0", "2,2.0", "3,3.0", "4,4.0"]


def test_fabric_utilities_exports_every_name_lightning_fabric_utilities_does() -> None:
    """README, Logging and throughput: "`fabric.utilities` exports every name `lightning.fabric.utilities`
    does"."""
    theirs = pytest.importorskip("lightning.fabric.utilities")
    import fabric.utilities as ours

    names = [name for name in theirs.__all__ if not name.startswith("_")]
    assert len(names) > 5
    assert [name for name in names if not hasattr(ours, name)] == []


# ------------------------------------------------------------------------------------------ Lightning parity
def _losses_of(fabric_class: type, precision: str) -> tuple[list[float], Any]:
    fabric = fabric_class(accelerator="cpu", devices=1, precision=precision)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    x, y = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), torch.ones(4, 1)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(model(x).float(), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, fabric.strategy.precision


def test_16_mixed_on_a_cpu_is_float16_with_scaling_where_lightning_runs_bf16_mixed() -> None:
    """README, Differences: "`16-mixed` on a CPU is what it says: float16 autocast with loss scaling;
    Lightning warns and runs `bf16-mixed` instead, so its numbers there are those of our `bf16-mixed`"."""
    lightning_fabric = pytest.importorskip("lightning.fabric")
    from fabric.precision.amp import MixedPrecision

    with pytest.warns(UserWarning, match="bf16-mixed"):
        theirs, _ = _losses_of(lightning_fabric.Fabric, "16-mixed")
    ours_bf16, _ = _losses_of(Fabric, "bf16-mixed")
    ours_fp16, precision = _losses_of(Fabric, "16-mixed")
    assert theirs == ours_bf16
    assert isinstance(precision, MixedPrecision) and precision.scaler is not None
    assert ours_fp16 != ours_bf16


@pytest.mark.timeout(200)
def test_a_sharded_directory_loads_into_two_process_ddp(tmp_path: Path) -> None:
    """README, Checkpoints: "Every layout loads into every strategy and world size": the sharded
    directory layout (written by one process here) into a 2-process DDP run, optimizer state included."""
    from tests.strategies.multiprocess import REPO_ROOT, read_rank_results, run_python

    fabric = _sharded_fabric()
    torch.manual_seed(1)
    module = torch.nn.Linear(4, 3)
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=0.1))
    for _ in range(2):
        fabric.backward(model(torch.randn(2, 4)).pow(2).sum())
        optimizer.step()
        optimizer.zero_grad()
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "step": 2})
    expected_state = optimizer.state_dict()["state"][0]

    out = tmp_path / "out"
    out.mkdir()
    run = run_python(
        [str(REPO_ROOT / "tests" / "scripts" / "ddp_loads_sharded.py"), str(tmp_path / "ckpt"), str(out)],
        timeout=170,
    )
    assert run.returncode == 0, run.output
    for result in read_rank_results(out, world_size=2):
        assert result["remainder"] == {"step": 2}
        assert result["weight"] == model.weight.detach().tolist()
        assert result["bias"] == model.bias.detach().tolist()
        assert result["exp_avg"] == expected_state["exp_avg"].tolist()
        assert result["adam_step"] == float(expected_state["step"])
    zero, one = read_rank_results(out, world_size=2)
    assert zero["after_step"] == one["after_step"] != zero["weight"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["link_to_the_directory", "link_to_a_file_inside", "dotdot"])
def test_consolidate_refuses_an_output_that_reaches_inside_through_a_link_or_dotdot(
    tmp_path: Path, how: str
) -> None:
    """README, Checkpoints: "`fabric consolidate CKPT_DIR [OUT]` ... an output inside the directory is
    refused", also when OUT reaches inside through a symbolic link or `..` (plain paths are in
    tests/checkpoint/test_hostile.py)."""
    fabric = _sharded_fabric()
    model, optimizer = _model_and_optimizer(fabric, seed=1)
    directory = tmp_path / "ckpt"
    fabric.save(directory, {"model": model, "optimizer": optimizer})
    before = {name: (directory / name).read_bytes() for name in os.listdir(directory)}
    if how == "link_to_the_directory":
        os.symlink(directory, tmp_path / "alias")
        out = tmp_path / "alias" / "merged.pt"
    elif how == "link_to_a_file_inside":
        os.symlink(directory / "merged.pt", tmp_path / "merged.pt")
        out = tmp_path / "merged.pt"
    else:
        out = directory / ".." / "ckpt" / "merged.pt"
    with pytest.raises(CheckpointError, match="inside the checkpoint directory"):
        consolidate(directory, out)
    assert {name: (directory / name).read_bytes() for name in os.listdir(directory)} == before


# ------------------------------------------------------------------------------------------ Many processes
def test_a_single_machine_run_uses_the_master_addr_you_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """README, Many processes: "A single-machine run binds its rendezvous to 127.0.0.1 unless you set
    `MASTER_ADDR`" (the 127.0.0.1 half runs in tests/strategies/test_ddp.py)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.5")
    fabric = Fabric(accelerator="cpu", devices=2)
    assert fabric.strategy.cluster_environment.main_address == "127.0.0.5"
    assert not fabric.strategy.cluster_environment.creates_processes_externally  # we still launch rank 1


# ------------------------------------------------------------------------------------------ documented signatures
def test_the_signatures_the_readme_spells_out() -> None:
    """README, Logging, Long runs, Checkpoints: the arguments and defaults it writes out are the real ones."""
    import inspect

    from fabric.checkpoint.manager import CheckpointManager
    from fabric.loggers import CSVLogger, TensorBoardLogger
    from fabric.utilities import SpikeDetection

    def defaults(obj: Any) -> dict[str, Any]:
        return {
            name: p.default
            for name, p in inspect.signature(obj).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }

    assert defaults(CSVLogger) == {
        "root_dir": "logs",
        "name": "lightning_logs",
        "version": None,
        "prefix": "",
        "flush_logs_every_n_steps": 100,
    }
    assert defaults(TensorBoardLogger) == {
        "root_dir": "logs",
        "name": "lightning_logs",
        "version": None,
        "default_hp_metric": True,
        "prefix": "",
        "sub_dir": None,
    }
    assert defaults(SpikeDetection) == {
        "mode": "min",
        "window": 10,
        "warmup": 1,
        "atol": None,
        "rtol": 2.0,
        "exclude_batches_path": None,
        "finite_only": True,
    }
    manager = defaults(CheckpointManager)
    assert {k: manager[k] for k in ("every", "keep_last", "keep_every", "requeue")} == {
        "every": None,
        "keep_last": 3,
        "keep_every": None,
        "requeue": True,
    }
    assert {k: v for k, v in defaults(Fabric.load_raw).items() if k in ("strict", "weights_only")} == {
        "strict": True,
        "weights_only": True,
    }
    load = defaults(Fabric.load)
    assert (load["weights_only"], load["restore_rng"]) == (True, True)


# ------------------------------------------------------------------------------------------ known gaps
@pytest.mark.timeout(60)
def test_a_sharded_save_through_a_symlink_writes_where_the_link_points(tmp_path: Path) -> None:
    fabric = _sharded_fabric()
    model, optimizer = _model_and_optimizer(fabric, seed=1)
    (tmp_path / "disk").mkdir()
    fabric.save(tmp_path / "disk" / "ckpt", {"model": model, "optimizer": optimizer, "version": 1})
    os.symlink(tmp_path / "disk" / "ckpt", tmp_path / "ckpt")
    fabric.save(tmp_path / "ckpt", {"model": model, "optimizer": optimizer, "version": 2})
    assert fabric.load(tmp_path / "ckpt")["version"] == 2
    assert os.path.islink(tmp_path / "ckpt")  # the user's link is kept, as for a single file
    assert fabric.load(tmp_path / "disk" / "ckpt")["version"] == 2
    reclaim.wait()  # the replaced version is freed in the background (it failed here on a loaded box)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "disk"]  # nothing left beside it
    assert sorted(os.listdir(tmp_path / "disk")) == ["ckpt"]


@pytest.mark.parametrize("layout", ["file", "sharded"])
def test_a_file_where_a_directory_of_the_path_should_be_is_named_in_the_error(
    tmp_path: Path, layout: str
) -> None:
    (tmp_path / "runs").write_text("notes, not a directory")
    fabric = _sharded_fabric() if layout == "sharded" else Fabric(accelerator="cpu", devices=1)
    model, optimizer = _model_and_optimizer(fabric, seed=1) if layout == "sharded" else (None, None)
    state = {"model": model, "optimizer": optimizer} if layout == "sharded" else {"step": 1}
    with pytest.raises(NotADirectoryError, match=r"'.*runs' is a file, not a directory"):
        fabric.save(tmp_path / "runs" / "epoch1" / "ckpt", state)
    assert (tmp_path / "runs").read_text() == "notes, not a directory"


def test_throughput_and_measure_flops_give_lightnings_numbers_under_lightnings_names() -> None:
    """README, Logging and throughput: "Names and arguments are Lightning's" (`Throughput`, `measure_flops`):
    the same updates give the same dict, key for key, and the same FLOP count."""
    theirs = pytest.importorskip("lightning.fabric.utilities.throughput")
    from fabric.utilities import Throughput, measure_flops

    results = []
    for cls in (theirs.Throughput, Throughput):
        throughput = cls(available_flops=100.0, world_size=2, window_size=3)
        for i in range(1, 6):
            throughput.update(time=float(i), batches=i, samples=4 * i, lengths=40 * i, flops=10 * i)
        results.append(throughput.compute())
    assert results[0] == results[1]
    assert "device/mfu" in results[1]

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
        x = torch.randn(16, 32)
    counts = [
        measure(model, lambda: model(x), lambda out: out.sum())
        for measure in (theirs.measure_flops, measure_flops)
    ]
    assert counts[0] == counts[1] > 0
