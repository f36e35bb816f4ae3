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

_T = 1e12
# The float32 matmul figure with TensorFloat-32 allowed is keyed "tfloat32" (Lightning's key).
_CUDA_FLOPS: dict[str, dict[torch.dtype | str, float]] = {
    # Hopper
    "h200 sxm1": {torch.float64: 34 * _T, torch.float32: 67 * _T, "tfloat32": 990 * _T,
                  torch.bfloat16: 2000 * _T, torch.float16: 2000 * _T, torch.int8: 4000 * _T},
    "h200 nvl1": {torch.float64: 30 * _T, torch.float32: 60 * _T, "tfloat32": 840 * _T,
                  torch.bfloat16: 1700 * _T, torch.float16: 1700 * _T, torch.int8: 3300 * _T},
    "h100 nvl": {torch.float64: 67 * _T, torch.float32: 133.8 * _T, "tfloat32": 989.4 * _T,
                 torch.bfloat16: 1978.8 * _T, torch.float16: 1978.8 * _T, torch.int8: 3957.8 * _T},
    "h100 sxm": {torch.float64: 33.5 * _T, torch.float32: 66.9 * _T, "tfloat32": 494.7 * _T,
                 torch.bfloat16: 989.4 * _T, torch.float16: 989.4 * _T, torch.int8: 1978.9 * _T},
    "h100 pcie": {torch.float64: 25.6 * _T, torch.float32: 51.2 * _T, "tfloat32": 378 * _T,
                  torch.bfloat16: 756 * _T, torch.float16: 756 * _T, torch.int8: 1513 * _T},
    # Ada
    "rtx 4090": {torch.float32: 82.6 * _T, "tfloat32": 82.6 * _T, torch.bfloat16: 82.6 * _T,
                 torch.float16: 82.6 * _T, torch.int8: 660.6 * _T, "int4": 1321.2 * _T},
    "rtx 4080": {torch.float32: 48.7 * _T, "tfloat32": 48.7 * _T, torch.bfloat16: 48.7 * _T,
                 torch.float16: 48.7 * _T, torch.int8: 389.9 * _T, "int4": 779.8 * _T},
    "rtx 4080 super": {torch.float32: 52.2 * _T, "tfloat32": 52.2 * _T, torch.bfloat16: 52.2 * _T,
                       torch.float16: 52.2 * _T, torch.int8: 417.6 * _T, "int4": 835.2 * _T},
    "l4": {torch.float32: 30.3 * _T, "tfloat32": 60 * _T, torch.bfloat16: 121 * _T,
           torch.float16: 121 * _T, torch.int8: 242 * _T, "int4": 484 * _T},
    "l40": {torch.float32: 90.5 * _T, "tfloat32": 90.5 * _T, torch.bfloat16: 181 * _T,
            torch.float16: 181 * _T, torch.int8: 362 * _T, "int4": 724 * _T},
    # Ampere
    "a100": {torch.float64: 9.7 * _T, torch.float32: 19.5 * _T, "tfloat32": 156 * _T,
             torch.bfloat16: 312 * _T, torch.float16: 312 * _T, torch.int8: 624 * _T},
    "a6000": {torch.float32: 38.7 * _T, "tfloat32": 77.4 * _T, torch.bfloat16: 38.7 * _T,
              torch.float16: 38.7 * _T, torch.int8: 309.7 * _T, "int4": 619.3 * _T},
    "a40": {torch.float32: 37.4 * _T, "tfloat32": 74.8 * _T, torch.bfloat16: 37.4 * _T,
            torch.float16: 37.4 * _T, torch.int8: 299.3 * _T, "int4": 598.7 * _T},
    "a10g": {torch.float32: 31.2 * _T, "tfloat32": 62.5 * _T, torch.bfloat16: 125 * _T,
             torch.float16: 125 * _T, torch.int8: 250 * _T, "int4": 500 * _T},
    "rtx 3090 ti": {torch.float32: 40 * _T, "tfloat32": 40 * _T, torch.bfloat16: 40 * _T,
                    torch.float16: 40 * _T, torch.int8: 320 * _T, "int4": 640 * _T},
    "rtx 3090": {torch.float32: 35.6 * _T, "tfloat32": 35.6 * _T, torch.bfloat16: 35.6 * _T,
                 torch.float16: 35.6 * _T, torch.int8: 284 * _T, "int4": 568 * _T},
    "rtx 3080 ti": {torch.float32: 34.1 * _T, "tfloat32": 34.1 * _T, torch.bfloat16: 34.1 * _T,
                    torch.float16: 34.1 * _T, torch.int8: 272.8 * _T, "int4": 546.6 * _T},
    "rtx 3080": {torch.float32: 29.8 * _T, "tfloat32": 29.8 * _T, torch.bfloat16: 29.8 * _T,
                 torch.float16: 29.8 * _T, torch.int8: 238 * _T, "int4": 476 * _T},
    "rtx 3070": {torch.float32: 20.3 * _T, "tfloat32": 20.3 * _T, torch.bfloat16: 20.3 * _T,
                 torch.float16: 20.3 * _T, torch.int8: 162.6 * _T, "int4": 325.2 * _T},
    # Turing
    "t4": {torch.float32: 8.1 * _T, torch.float16: 65 * _T, torch.int8: 130 * _T, "int4": 260 * _T},
    "quadro rtx 5000": {torch.float32: 11.2 * _T, torch.float16: 89.2 * _T},
    "rtx 2080 super": {torch.float32: 11.2 * _T, torch.float16: 22.3 * _T, torch.int8: 178.4 * _T,
                       "int4": 356.8 * _T},
    "rtx 2080 ti": {torch.float32: 14.2 * _T, torch.float16: 28.5 * _T, torch.int8: 227.7 * _T,
                    "int4": 455.4 * _T},
    "rtx 2080": {torch.float32: 10.6 * _T, torch.float16: 21.2 * _T, torch.int8: 169.6 * _T,
                 "int4": 339.1 * _T},
    "rtx 2070 super": {torch.float32: 9.1 * _T, torch.float16: 18.1 * _T, torch.int8: 145 * _T,
                       "int4": 290 * _T},
    "titan rtx": {torch.float32: 16.3 * _T, torch.float16: 32.6 * _T, torch.int8: 261 * _T, "int4": 522 * _T},
    # Volta
    "v100 sxm": {torch.float64: 7.8 * _T, torch.float32: 15.7 * _T, torch.float16: 125 * _T},
    "v100 pcie": {torch.float64: 7 * _T, torch.float32: 14 * _T, torch.float16: 112 * _T},
    "v100s pcie": {torch.float64: 8.2 * _T, torch.float32: 16.4 * _T, torch.float16: 130 * _T},
}  # fmt: skip

# bfloat16 peak per TPU chip, by the TPU runtime's type name.
_TPU_FLOPS = {"v2": 45 * _T, "v3": 123 * _T, "v4": 275 * _T, "v5litepod": 197 * _T}

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
