"""DeepSpeedStrategy's arguments, names, config merging and precision mapping: one process, nothing launched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fabric import Fabric
from fabric.strategies.deepspeed import DeepSpeedStrategy, deepspeed_available

pytestmark = [
    pytest.mark.deepspeed,
    pytest.mark.skipif(not deepspeed_available(), reason="DeepSpeed is not installed (nox -s deepspeed)"),
]


def _fabric(strategy: Any, precision: str | None = None) -> Fabric:
    return Fabric(accelerator="cpu", strategy=strategy, devices=2, precision=precision)


@pytest.mark.parametrize(
    ("name", "stage", "offload_optimizer", "offload_param"),
    [
        ("deepspeed", 2, None, None),
        ("deepspeed_stage_1", 1, None, None),
        ("deepspeed_stage_2", 2, None, None),
        ("deepspeed_stage_2_offload", 2, "cpu", None),
        ("deepspeed_stage_3", 3, None, None),
        ("deepspeed_stage_3_offload", 3, "cpu", "cpu"),
        ("deepspeed_stage_3_offload_nvme", 3, "nvme", "nvme"),
    ],
)
def test_names_build_the_matching_zero_config(
    name: str, stage: int, offload_optimizer: str | None, offload_param: str | None
) -> None:
    strategy = _fabric(name).strategy
    assert isinstance(strategy, DeepSpeedStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage == strategy.zero_stage
    assert (zero.get("offload_optimizer") or {}).get("device") == offload_optimizer
    assert (zero.get("offload_param") or {}).get("device") == offload_param


def test_user_config_wins_over_default_arguments(tmp_path: Path) -> None:
    config = {"zero_optimization": {"stage": 3, "overlap_comm": False}, "train_micro_batch_size_per_gpu": 4}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    for given in (config, str(path), path):
        strategy = DeepSpeedStrategy(config=given)
        assert strategy.config["zero_optimization"] == {"stage": 3, "overlap_comm": False}
        assert strategy.config["train_micro_batch_size_per_gpu"] == 4
        assert strategy.zero_stage == 3


def test_changed_argument_completes_the_config() -> None:
    strategy = DeepSpeedStrategy(stage=3, offload_optimizer=True, config={"gradient_clipping": 1.0})
    assert strategy.config["gradient_clipping"] == 1.0
    assert strategy.config["zero_optimization"]["stage"] == 3
    assert strategy.config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "config", "match"),
    [
        (
            {"stage": 3},
            {"zero_optimization": {"stage": 1}},
            r"stage=3\) contradicts the config.*zero_optimization.stage=1",
        ),
        ({"overlap_comm": False}, {"zero_optimization": {"overlap_comm": True}}, "overlap_comm=False"),
        ({"loss_scale": 128}, {"fp16": {"loss_scale": 0}}, "loss_scale=128"),
        ({"zero_optimization": False}, {"zero_optimization": {"stage": 1}}, "zero_optimization=False"),
    ],
)
def test_argument_contradicting_the_config_is_an_error(
    kwargs: dict[str, Any], config: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        DeepSpeedStrategy(config=config, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stage": 4}, ValueError, r"stage=4\): allowed 0, 1, 2, 3"),
        ({"offload_parameters": True, "stage": 2}, ValueError, "only in ZeRO stage 3"),
        ({"offload_optimizer_device": "disk"}, ValueError, "allowed 'cpu' or 'nvme'"),
        ({"config": "/no/such/file.json"}, FileNotFoundError, "no such file"),
        ({"config": 3}, TypeError, "pass a dict or the path"),
    ],
)
def test_bad_arguments_fail_before_launch(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DeepSpeedStrategy(**kwargs)


@pytest.mark.parametrize(
    ("precision", "section"),
    [
        (None, {}),
        ("32-true", {}),
        ("16-mixed", {"fp16"}),
        ("bf16-mixed", {"bf16"}),
        ("bf16-true", {"bf16"}),
        ("16-true", {"fp16"}),
    ],
)
def test_precision_fills_the_config(precision: str | None, section: set[str]) -> None:
    strategy = _fabric("deepspeed", precision).strategy
    assert isinstance(strategy, DeepSpeedStrategy)
    config = strategy._engine_config()
    assert {k for k in ("fp16", "bf16") if config.get(k, {}).get("enabled")} == set(section)
    if "fp16" in section:
        assert config["fp16"]["loss_scale"] == 0 and config["fp16"]["initial_scale_power"] == 16
    assert "__loss_scale__" not in config


def test_64_bit_precision_is_refused_before_launch() -> None:
    with pytest.raises(ValueError, match="does not support precision='64-true'"):
        _fabric("deepspeed", "64-true")


def test_config_precision_contradicting_fabric_precision_is_an_error() -> None:
    strategy = _fabric(DeepSpeedStrategy(config={"bf16": {"enabled": True}}), "32-true").strategy
    with pytest.raises(ValueError, match=r"enables 'bf16', but Fabric\(precision='32-true'\)"):
        strategy._engine_config()  # type: ignore[attr-defined]


def test_torch_optimizer_with_offload_is_allowed_explicitly() -> None:
    from fabric.strategies.deepspeed_config import offloads_optimizer as _offloads_optimizer

    strategy = DeepSpeedStrategy(stage=2, offload_optimizer=True)
    assert _offloads_optimizer(strategy.config)
    assert not _offloads_optimizer(DeepSpeedStrategy(stage=2).config)


def test_no_gradient_clipping_unless_configured() -> None:
    # DeepSpeed 0.19 would clip at norm 1.0 by default; a Fabric loop clips only when asked
    assert DeepSpeedStrategy()._engine_config()["gradient_clipping"] == 0.0
    configured = DeepSpeedStrategy(config={"gradient_clipping": 0.5})._engine_config()
    assert configured["gradient_clipping"] == 0.5


def test_consolidation_refuses_a_directory_that_is_not_a_deepspeed_checkpoint(tmp_path: Path) -> None:
    from fabric.checkpoint.io import CheckpointError
    from fabric.strategies.deepspeed import consolidate_deepspeed

    (tmp_path / "not_ds").mkdir()
    with pytest.raises(CheckpointError, match="not a DeepSpeed checkpoint directory"):
        consolidate_deepspeed(tmp_path / "not_ds", tmp_path / "out.pt")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        consolidate_deepspeed(tmp_path / "missing", tmp_path / "out.pt")


def test_cpu_zero3_sizes_fill_only_what_the_user_left_open() -> None:
    from fabric.strategies.deepspeed_config import CPU_ZERO3_SIZES, add_cpu_zero3_sizes

    config = DeepSpeedStrategy(stage=3, sub_group_size=7).config
    assert add_cpu_zero3_sizes(config, {"stage", "sub_group_size"}) == {
        k: v for k, v in CPU_ZERO3_SIZES.items() if k != "sub_group_size"
    }
    assert config["zero_optimization"]["sub_group_size"] == 7
    assert config["zero_optimization"]["reduce_bucket_size"] == CPU_ZERO3_SIZES["reduce_bucket_size"]
    user = {"zero_optimization": {"stage": 3}}
    assert add_cpu_zero3_sizes(user, None) == {} and user == {"zero_optimization": {"stage": 3}}
    stage2 = DeepSpeedStrategy(stage=2).config
    assert add_cpu_zero3_sizes(stage2, set()) == {}
    assert stage2["zero_optimization"]["reduce_bucket_size"] == 200_000_000
