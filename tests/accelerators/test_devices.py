"""Parsing `devices` and choosing accelerators, with the errors for impossible requests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fabric.accelerators import CPUAccelerator, CUDAAccelerator
from fabric.utilities.device_parser import parse_cpu_count, parse_gpu_ids


@pytest.mark.parametrize(
    ("devices", "available", "expected"),
    [
        (1, 4, [0]),
        (3, 4, [0, 1, 2]),
        (-1, 4, [0, 1, 2, 3]),
        ("-1", 2, [0, 1]),
        ("auto", 3, [0, 1, 2]),
        ("2", 4, [0, 1]),
        ("0,1", 4, [0, 1]),
        ("1,", 4, [1]),
        (" 3, 1 ", 4, [3, 1]),
        ([2, 0], 4, [2, 0]),
        ((1,), 2, [1]),
    ],
)
def test_parse_gpu_ids(devices: Any, available: int, expected: list[int]) -> None:
    assert parse_gpu_ids(devices, available, "cuda") == expected


@pytest.mark.parametrize(
    ("devices", "available", "error", "match"),
    [
        (2, 1, ValueError, "has 1 cuda device"),
        ([0, 3], 2, ValueError, r"device\(s\) \[3\]"),
        ("0,0", 2, ValueError, "more than once"),
        ("auto", 0, ValueError, "has no cuda device"),
        (0, 2, ValueError, "selects no cuda device"),
        (-2, 2, ValueError, "is invalid"),
        ("x", 2, ValueError, "is not understood"),
        ("0,a", 2, ValueError, "comma-separated"),
        (True, 2, TypeError, "is a bool"),
        ([0.5], 2, TypeError, "int indices only"),
        (1.5, 2, TypeError, "has type float"),
    ],
)
def test_parse_gpu_ids_errors(devices: Any, available: int, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_gpu_ids(devices, available, "cuda")


@pytest.mark.parametrize(("devices", "expected"), [(1, 1), (4, 4), ("2", 2), ("auto", 1), (-1, 1)])
def test_cpu_devices(devices: Any, expected: int) -> None:
    assert parse_cpu_count(devices) == expected
    assert CPUAccelerator.get_parallel_devices(devices) == [torch.device("cpu")] * expected


@pytest.mark.parametrize("devices", [0, -3, [0, 1], "0,1", "many", True])
def test_cpu_devices_errors(devices: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="accelerator='cpu'|is a bool"):
        parse_cpu_count(devices)


def test_cuda_unavailable_here_is_reported() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert not CUDAAccelerator.is_available()
    with pytest.raises(ValueError, match="has no cuda device"):
        CUDAAccelerator.parse_devices(1)
