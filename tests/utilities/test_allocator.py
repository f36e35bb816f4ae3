"""fabric.utilities.allocator: glibc returns large freed blocks to the system after FSDP/ZeRO-3 setup on CPU.

Each case runs in a fresh interpreter: the setting is process-wide and glibc reads its environment
variables once, at start-up. What is checked is glibc's own behaviour, through ``mallinfo2``: a 4 MiB
block is allocated and freed (with glibc's defaults this raises the mmap threshold above 4 MiB), then
a 1 MiB block is allocated. With the threshold fixed at 128 KiB the 1 MiB block is an mmap'ed chunk
(it goes back to the system when freed); with the defaults it comes from the heap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"),
    reason="glibc's malloc only",
)

PROBE = textwrap.dedent(
    """
    import ctypes, json, sys

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.mallinfo2.restype = MallInfo2
    set_by_fabric = None
    if sys.argv[1] == "setup":
        from fabric.utilities.allocator import return_large_blocks_to_system
        set_by_fabric = return_large_blocks_to_system()
    elif sys.argv[1] == "fsdp":
        from fabric import Fabric
        fabric = Fabric(accelerator="cpu", devices=1, strategy="fsdp")
        fabric.launch()
    libc.free(libc.malloc(4 << 20))  # with glibc's defaults: the mmap threshold rises above 4 MiB
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(1 << 20)
    mmapped = libc.mallinfo2().hblkhd - before >= 1 << 20
    libc.free(block)
    print(json.dumps({"set": set_by_fabric, "mmapped": mmapped}))
    """
)


def _probe(mode: str, **env: str) -> dict:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
    }
    environment.pop("FABRIC_KEEP_ALLOCATOR", None)
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_glibc_defaults_keep_a_large_block_in_the_heap() -> None:
    """The control: without fabric the 1 MiB block comes from the heap (what made FSDP's peak high)."""
    assert _probe("none") == {"set": None, "mmapped": False}


def test_fixing_the_threshold_returns_large_blocks_to_the_system() -> None:
    assert _probe("setup") == {"set": True, "mmapped": True}


def test_fsdp_on_cpu_fixes_the_threshold_at_setup() -> None:
    assert _probe("fsdp")["mmapped"] is True


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_MMAP_THRESHOLD_": "33554432"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432"},
        {"FABRIC_KEEP_ALLOCATOR": "1"},
    ],
    ids=["variable", "tunable", "opt-out"],
)
def test_a_user_choice_is_left_alone(env: dict[str, str]) -> None:
    assert _probe("setup", **env) == {"set": False, "mmapped": False}
