"""Peak FLOP/s of accelerators, for model-FLOPs utilization: ``get_available_flops``.

The figures and the devices covered are Lightning Fabric's (``lightning.fabric.utilities.throughput``),
so that the same run reports the same MFU under either package. They are the vendors' data-sheet
peaks; where a data sheet gives a figure with sparsity, Lightning's table (and so ours) uses it for
some chips (H200, H100 NVL), which makes MFU there look lower than against a dense peak.
"""

from __future__ import annotations

import re

import torch

from fabric.utilities.rank_zero import rank_zero_warn

# The float32 matmul figure with TensorFloat-32 allowed is keyed "tfloat32" (Lightning's key).
_CUDA_FLOPS: dict[str, dict[torch.dtype | str, float]] = {
    # Hopper
    "h200 sxm1": {torch.float64: 34e12, torch.float32: 67e12, "tfloat32": 990e12,
                  torch.bfloat16: 2000e12, torch.float16: 2000e12, torch.int8: 4000e12},
    "h200 nvl1": {torch.float64: 30e12, torch.float32: 60e12, "tfloat32": 840e12,
                  torch.bfloat16: 1700e12, torch.float16: 1700e12, torch.int8: 3300e12},
    "h100 nvl": {torch.float64: 67e12, torch.float32: 133.8e12, "tfloat32": 989.4e12,
                 torch.bfloat16: 1978.8e12, torch.float16: 1978.8e12, torch.int8: 3957.8e12},
    "h100 sxm": {torch.float64: 33.5e12, torch.float32: 66.9e12, "tfloat32": 494.7e12,
                 torch.bfloat16: 989.4e12, torch.float16: 989.4e12, torch.int8: 1978.9e12},
    "h100 pcie": {torch.float64: 25.6e12, torch.float32: 51.2e12, "tfloat32": 378e12,
                  torch.bfloat16: 756e12, torch.float16: 756e12, torch.int8: 1513e12},
    # Ada
    "rtx 4090": {torch.float32: 82.6e12, "tfloat32": 82.6e12, torch.bfloat16: 82.6e12,
                 torch.float16: 82.6e12, torch.int8: 660.6e12, "int4": 1321.2e12},
    "rtx 4080": {torch.float32: 48.7e12, "tfloat32": 48.7e12, torch.bfloat16: 48.7e12,
                 torch.float16: 48.7e12, torch.int8: 389.9e12, "int4": 779.8e12},
    "rtx 4080 super": {torch.float32: 52.2e12, "tfloat32": 52.2e12, torch.bfloat16: 52.2e12,
                       torch.float16: 52.2e12, torch.int8: 417.6e12, "int4": 835.2e12},
    "l4": {torch.float32: 30.3e12, "tfloat32": 60e12, torch.bfloat16: 121e12,
           torch.float16: 121e12, torch.int8: 242e12, "int4": 484e12},
    "l40": {torch.float32: 90.5e12, "tfloat32": 90.5e12, torch.bfloat16: 181e12,
            torch.float16: 181e12, torch.int8: 362e12, "int4": 724e12},
    # Ampere
    "a100": {torch.float64: 9.7e12, torch.float32: 19.5e12, "tfloat32": 156e12,
             torch.bfloat16: 312e12, torch.float16: 312e12, torch.int8: 624e12},
    "a6000": {torch.float32: 38.7e12, "tfloat32": 77.4e12, torch.bfloat16: 38.7e12,
              torch.float16: 38.7e12, torch.int8: 309.7e12, "int4": 619.3e12},
    "a40": {torch.float32: 37.4e12, "tfloat32": 74.8e12, torch.bfloat16: 37.4e12,
            torch.float16: 37.4e12, torch.int8: 299.3e12, "int4": 598.7e12},
    "a10g": {torch.float32: 31.2e12, "tfloat32": 62.5e12, torch.bfloat16: 125e12,
             torch.float16: 125e12, torch.int8: 250e12, "int4": 500e12},
    "rtx 3090 ti": {torch.float32: 40e12, "tfloat32": 40e12, torch.bfloat16: 40e12,
                    torch.float16: 40e12, torch.int8: 320e12, "int4": 640e12},
    "rtx 3090": {torch.float32: 35.6e12, "tfloat32": 35.6e12, torch.bfloat16: 35.6e12,
                 torch.float16: 35.6e12, torch.int8: 284e12, "int4": 568e12},
    "rtx 3080 ti": {torch.float32: 34.1e12, "tfloat32": 34.1e12, torch.bfloat16: 34.1e12,
                    torch.float16: 34.1e12, torch.int8: 272.8e12, "int4": 546.6e12},
    "rtx 3080": {torch.float32: 29.8e12, "tfloat32": 29.8e12, torch.bfloat16: 29.8e12,
                 torch.float16: 29.8e12, torch.int8: 238e12, "int4": 476e12},
    "rtx 3070": {torch.float32: 20.3e12, "tfloat32": 20.3e12, torch.bfloat16: 20.3e12,
                 torch.float16: 20.3e12, torch.int8: 162.6e12, "int4": 325.2e12},
    # Turing
    "t4": {torch.float32: 8.1e12, torch.float16: 65e12, torch.int8: 130e12, "int4": 260e12},
    "quadro rtx 5000": {torch.float32: 11.2e12, torch.float16: 89.2e12},
    "rtx 2080 super": {torch.float32: 11.2e12, torch.float16: 22.3e12, torch.int8: 178.4e12,
                       "int4": 356.8e12},
    "rtx 2080 ti": {torch.float32: 14.2e12, torch.float16: 28.5e12, torch.int8: 227.7e12,
                    "int4": 455.4e12},
    "rtx 2080": {torch.float32: 10.6e12, torch.float16: 21.2e12, torch.int8: 169.6e12,
                 "int4": 339.1e12},
    "rtx 2070 super": {torch.float32: 9.1e12, torch.float16: 18.1e12, torch.int8: 145e12,
                       "int4": 290e12},
    "titan rtx": {torch.float32: 16.3e12, torch.float16: 32.6e12, torch.int8: 261e12, "int4": 522e12},
    # Volta
    "v100 sxm": {torch.float64: 7.8e12, torch.float32: 15.7e12, torch.float16: 125e12},
    "v100 pcie": {torch.float64: 7e12, torch.float32: 14e12, torch.float16: 112e12},
    "v100s pcie": {torch.float64: 8.2e12, torch.float32: 16.4e12, torch.float16: 130e12},
}  # fmt: skip

# bfloat16 peak per TPU chip, by the TPU runtime's type name.
_TPU_FLOPS = {"v2": 45e12, "v3": 123e12, "v4": 275e12, "v5litepod": 197e12}

# (pattern searched in the lower-cased device name, table row), the first match winning. Order
# matters where one name contains another ("rtx 3080 ti" before "rtx 3080", "v100s" before "v100").
_CUDA_NAMES: tuple[tuple[str, str], ...] = (
    (r"h200.*sxm1", "h200 sxm1"),
    (r"h200.*nvl1", "h200 nvl1"),
    (r"h100.*hbm3", "h100 sxm"),
    (r"h100.*nvl", "h100 nvl"),
    (r"h100.*(pcie|hbm2e)", "h100 pcie"),
    (r"tesla l4", "l40"),  # Lightning's reading of "Tesla L4..." names
    (r"l4", "l4"),
    (r"a6000", "a6000"),
    (r"a100", "a100"),
    (r"a40", "a40"),
    (r"a10g", "a10g"),
    (r"t4", "t4"),
    (r"quadro rtx 5000", "quadro rtx 5000"),
    (r"titan rtx", "titan rtx"),
    (r"v100-sxm", "v100 sxm"),
    (r"v100-pcie", "v100 pcie"),
    (r"v100s-pcie", "v100s pcie"),
)


def _cuda_chip(device_name: str) -> str | None:
    """The table row for a CUDA device name as ``torch.cuda.get_device_name`` gives it, or None."""
    name = device_name.lower()
    geforce = re.search(r"geforce rtx (\w+)", name)
    if geforce is not None and not any(chip in name for chip in ("h100", "h200")):
        suffix = " super" if "super" in name else " ti" if re.search(r"\bti\b", name) else ""
        return f"rtx {geforce.group(1)}{suffix}"
    if "h200" in name or "h100" in name:  # a Hopper name without a known variant has no row
        return next((chip for pattern, chip in _CUDA_NAMES[:5] if re.search(pattern, name)), name)
    return next((chip for pattern, chip in _CUDA_NAMES[5:] if re.search(pattern, name)), None)


def get_available_flops(device: torch.device, dtype: torch.dtype | str) -> int | None:
    """The peak FLOP/s of one ``device`` computing in ``dtype``, or None (with a warning) if not known.

    An optimistic upper limit (thick matmuls only), used as the denominator of MFU. float32 counts as
    TensorFloat-32 on Ampere and later when ``torch.set_float32_matmul_precision`` allows it. TPUs are
    looked up by the runtime's chip type (needs ``torch_xla``). Other devices (CPU, MPS) give None.

    Example::

        get_available_flops(torch.device("cuda"), torch.bfloat16)  # 989400000000000 on an H100 SXM
    """
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
        chip = _cuda_chip(device_name)
        if chip is None:
            rank_zero_warn(f"FLOPs not found for {device_name!r}")
            return None
        if chip not in _CUDA_FLOPS:
            rank_zero_warn(f"FLOPs not found for {device_name!r}, chip is {chip!r}")
            return None
        peaks = _CUDA_FLOPS[chip]
        if dtype == "tf32":  # our earlier spelling of Lightning's "tfloat32"
            dtype = "tfloat32"
        if dtype is torch.float32 and _tf32_in_use(device):
            dtype = "tfloat32"
        if dtype not in peaks:
            rank_zero_warn(f"{device_name!r} does not support {dtype}")
            return None
        return int(peaks[dtype])
    if device.type == "xla":
        from torch_xla._internal import tpu  # lazy: torch_xla is optional and slow to import

        tpu_env = tpu.get_tpu_env()
        # Not every TPU generation sets TYPE (e.g. TYPE="V4" or only ACCELERATOR_TYPE="v4-8").
        device_name = tpu_env.get("TYPE") or tpu_env["ACCELERATOR_TYPE"].split("-")[0]
        if device_name.lower() not in _TPU_FLOPS:
            rank_zero_warn(f"FLOPs not found for TPU {device_name!r} with {dtype}")
            return None
        return int(_TPU_FLOPS[device_name.lower()])
    return None


def _tf32_in_use(device: torch.device) -> bool:
    """Whether float32 matmuls run as TensorFloat-32: allowed by the user, on Ampere (8.0) or later."""
    if torch.get_float32_matmul_precision() == "highest":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8
