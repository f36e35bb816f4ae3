"""``get_available_flops``: Lightning's table of peak FLOP/s, looked up by CUDA device name.

There is no GPU here: the device name is the input of the lookup, so the tests give it by patching
``torch.cuda.get_device_name`` (what a GPU would report); the table and the name parsing are real.
"""

from __future__ import annotations

import pytest
import torch

from fabric.utilities.peak_flops import get_available_flops
from fabric.utilities.throughput import get_available_flops as from_throughput

CUDA = torch.device("cuda")

# Device names as GPUs report them, each with a float32 peak in Lightning's table.
KNOWN = [
    "NVIDIA H100 PCIe",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA H100 NVL",
    "NVIDIA H200 SXM1",
    "NVIDIA L4",
    "Tesla L4",
    "NVIDIA GeForce RTX 4090",
    "NVIDIA GeForce RTX 4080 SUPER",
    "NVIDIA A100 80GB PCIe",
    "NVIDIA A100-SXM4-40GB",
    "NVIDIA GeForce RTX 3090 Ti",
    "NVIDIA GeForce RTX 3080 Ti",
    "NVIDIA GeForce RTX 3070",
    "NVIDIA RTX A6000",
    "NVIDIA A40",
    "NVIDIA A10G",
    "NVIDIA GeForce RTX 2080 SUPER",
    "NVIDIA GeForce RTX 2080 Ti",
    "NVIDIA GeForce RTX 2070 Super",
    "Quadro RTX 5000 with Max-Q Design",
    "Tesla T4",
    "TITAN RTX",
    "Tesla V100-SXM2-32GB",
    "Tesla V100-PCIE-32GB",
    "Tesla V100S-PCIE-32GB",
]


def _named(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("name", KNOWN)
def test_every_listed_gpu_has_a_float32_peak(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _named(monkeypatch, name)
    flops = get_available_flops(CUDA, torch.float32)
    assert isinstance(flops, int) and flops > 1e12


@pytest.mark.parametrize(
    ("name", "dtype", "flops"),
    [
        ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),  # Lightning's figures, so MFU agrees
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),
        ("NVIDIA H100 80GB HBM3", torch.float64, 33.5e12),
        ("NVIDIA GeForce RTX 3080 Ti", torch.float16, 34.1e12),  # " ti" is its own row
        ("NVIDIA GeForce RTX 3080", torch.float16, 29.8e12),
        ("Tesla V100S-PCIE-32GB", torch.float16, 130e12),  # V100S is not V100
        ("NVIDIA A100-SXM4-40GB", "tfloat32", 156e12),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156e12),  # the spelling fabric used before
    ],
)
def test_figures(monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype | str, flops: float) -> None:
    _named(monkeypatch, name)
    assert get_available_flops(CUDA, dtype) == int(flops)


def test_unknown_gpu_or_dtype_warns_and_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    _named(monkeypatch, "CocoNut")
    with pytest.warns(UserWarning, match="FLOPs not found for 'CocoNut'"):
        assert get_available_flops(CUDA, torch.bfloat16) is None
    _named(monkeypatch, "NVIDIA H100")  # a Hopper name without its variant: no row, as in Lightning
    with pytest.warns(UserWarning, match="chip is 'nvidia h100'"):
        assert get_available_flops(CUDA, torch.bfloat16) is None
    _named(monkeypatch, "t4")
    with pytest.warns(UserWarning, match="'t4' does not support torch.bfloat16"):
        assert get_available_flops(CUDA, torch.bfloat16) is None


def test_cpu_has_no_peak_and_throughput_exports_the_same_function() -> None:
    assert get_available_flops(torch.device("cpu"), torch.float32) is None
    assert from_throughput is get_available_flops


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64, torch.int8])
def test_same_answers_as_lightning(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """Every listed name and some unknown ones give Lightning's figure (or its None) in each dtype."""
    import warnings

    lightning_throughput = pytest.importorskip("lightning.fabric.utilities.throughput")
    for name in [*KNOWN, "CocoNut", "NVIDIA H100", "NVIDIA H200", "NVIDIA L40S", "NVIDIA GeForce RTX 3060"]:
        _named(monkeypatch, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = lightning_throughput.get_available_flops(CUDA, dtype)
            assert get_available_flops(CUDA, dtype) == expected, name
