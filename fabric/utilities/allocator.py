"""Let glibc give large freed blocks back to the system in sharded runs on CPU.

FSDP2 (and ZeRO-3) gathers a unit's full parameters before it runs and frees them after, every step,
so a rank allocates and frees the same few large blocks over and over. glibc's ``malloc`` serves blocks
of 128 KiB and more with ``mmap`` at first, but raises that threshold (up to 32 MiB) each time such a
block is freed; from then on the gathered parameters come from the heap, which keeps freed memory
resident. The resident peak then shows the allocator's high-water mark, not what is live: measured on
2 ranks, FSDP's per-rank peak was 1.1-1.2x DDP's with glibc's defaults and 0.55-0.61x with
``MALLOC_MMAP_THRESHOLD_=131072`` (benchmarks/results.md, figure "FSDP2 per-rank peak memory").

Setting the threshold explicitly (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``, what that variable does at
start-up) also turns the dynamic raising off. It is done once, at strategy setup, only on Linux with
glibc, only when the strategy shards on a CPU, and never when the user chose an allocator setting
(``MALLOC_MMAP_THRESHOLD_`` or a ``glibc.malloc.mmap_threshold`` tunable) or opted out with
``FABRIC_KEEP_ALLOCATOR=1``.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default starting value, kept fixed
OPT_OUT_VARIABLE = "FABRIC_KEEP_ALLOCATOR"


def user_chose_allocator() -> bool:
    """Whether the environment already sets glibc's mmap threshold, or opts out of ours."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return (
        "MALLOC_MMAP_THRESHOLD_" in os.environ
        or "glibc.malloc.mmap_threshold" in tunables
        or os.environ.get(OPT_OUT_VARIABLE) == "1"
    )


def return_large_blocks_to_system() -> bool:
    """Fix glibc's mmap threshold at 128 KiB for this process; True if it was set.

    A no-op (False) off Linux, on a C library other than glibc, or when :func:`user_chose_allocator`.
    """
    if not sys.platform.startswith("linux") or user_chose_allocator():
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
