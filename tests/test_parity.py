"""The same seeded loop in raw PyTorch and through Fabric ends with bit-identical weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fabric import Fabric
from tests.helpers import parameters_equal, regression_data, tiny_mlp

STEPS = 50


def _raw_loop(autocast_dtype: torch.dtype | None) -> torch.nn.Module:
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = regression_data()
    for step in range(STEPS):
        batch = slice((step % 4) * 16, (step % 4 + 1) * 16)
        if autocast_dtype is None:
            loss = F.mse_loss(model(x[batch]), y[batch])
        else:
            with torch.autocast("cpu", dtype=autocast_dtype):
                loss = F.mse_loss(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def _fabric_loop(precision: str) -> torch.nn.Module:
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    x, y = regression_data()
    for step in range(STEPS):
        batch = slice((step % 4) * 16, (step % 4 + 1) * 16)
        loss = F.mse_loss(model(x[batch]), y[batch])
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    return model.module


@pytest.mark.parametrize(("precision", "autocast_dtype"), [("32-true", None), ("bf16-mixed", torch.bfloat16)])
def test_fabric_matches_raw_pytorch_bit_for_bit(precision: str, autocast_dtype: torch.dtype | None) -> None:
    raw = _raw_loop(autocast_dtype)
    through_fabric = _fabric_loop(precision)
    assert parameters_equal(raw, through_fabric)
    # and the run did something: the weights moved away from the initial ones
    assert not parameters_equal(raw, tiny_mlp())


def _raw_fp16_loop_with_scaler() -> tuple[torch.nn.Module, float]:
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    x, y = regression_data()
    for step in range(STEPS):
        batch = slice((step % 4) * 16, (step % 4 + 1) * 16)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x[batch]), y[batch])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    return model, scaler.get_scale()


def test_fp16_mixed_matches_raw_autocast_with_a_grad_scaler_bit_for_bit() -> None:
    """README, Use: "Mixed precision leaves inputs to autocast, so a Fabric loop matches a raw
    `torch.autocast` loop bit for bit; `"16-mixed"` scales the loss" (the raw loop: autocast + GradScaler)."""
    raw, raw_scale = _raw_fp16_loop_with_scaler()
    through_fabric = _fabric_loop("16-mixed")
    assert parameters_equal(raw, through_fabric)
    assert raw_scale < 2.0**16  # the loop overflowed at least once: both skipped the same steps
