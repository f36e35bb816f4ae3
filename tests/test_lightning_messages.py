"""Errors that Lightning users match on in their own tests start with Lightning's words (ours follow)."""

from __future__ import annotations

import pytest
import torch

from fabric import Fabric
from fabric.precision import MixedPrecision
from fabric.precision.deepspeed import DeepSpeedPrecision


def test_mixed_precision_errors() -> None:
    with pytest.raises(ValueError, match=r"`precision='bf16-mixed'` does not use a scaler"):
        MixedPrecision("bf16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(
        ValueError, match=r"Passed `MixedPrecision\(precision='16'\)`. Precision must be '16-mixed'"
    ):
        MixedPrecision("16", device="cpu")


def test_deepspeed_precision_error() -> None:
    with pytest.raises(
        ValueError, match="is not supported in DeepSpeed. `precision` must be one of: '32-true'"
    ):
        DeepSpeedPrecision("64-true")


def test_mark_forward_method_forward() -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    module = fabric.setup_module(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="You cannot mark the forward method itself"):
        module.mark_forward_method("forward")


def test_optimizer_set_up_twice() -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    optimizer = fabric.setup_optimizers(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(
        ValueError, match="An optimizer should be passed only once to the `setup_optimizers` method"
    ):
        fabric.setup_optimizers(optimizer)


def test_setup_dataloaders_and_no_backward_sync_errors() -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    with pytest.raises(TypeError, match="Only PyTorch DataLoader are currently supported.*got range"):
        fabric.setup_dataloaders(range(2))
    with pytest.raises(TypeError, match="You need to set up the model first.*got Linear"):
        fabric.no_backward_sync(torch.nn.Linear(2, 2)).__enter__()


def test_fabric_dataloader_built_with_lightnings_signature() -> None:
    from torch.utils.data import DataLoader

    from fabric.wrappers import _FabricDataLoader

    loader = _FabricDataLoader(DataLoader(range(4), batch_size=2))
    assert loader.device is None and len(loader) == 2
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    moved = _FabricDataLoader(DataLoader(range(2), batch_size=2), device=torch.device("cpu"))
    assert [b.device.type for b in moved] == ["cpu"]
