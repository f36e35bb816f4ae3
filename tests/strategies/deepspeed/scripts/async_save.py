"""Asynchronous DeepSpeed saves on 2 real processes: ``python async_save.py OUT_DIR``.

For ZeRO stages 2, 3 (with one and with two optimizer sub-groups) and 2 with the optimizer offloaded to
CPU memory, each rank saves the same state synchronously and asynchronously, trains on
(changing the parameters, ZeRO's fp32 partitions and Adam's moments in place) before the background
write is let go, and then compares the two checkpoints file by file and through a load. Then one
asynchronous save fails (the file size limit is lowered on rank 0) and must be raised on both ranks
at the next call. Each rank writes ``OUT_DIR/rank{N}.json``; at the end one more failing save is
left unwaited: the process must exit non-zero with the error's message.

The background thread of every save here is held at a gate until the training thread opens it, so
that "the parameters change while the write has not happened yet" is certain, not a matter of timing.

The two checkpoints are compared byte for byte, not with ``torch.equal``: ZeRO-3 pads each
parameter's partition on the last rank to an even split and never initializes the padding
(``torch.empty``), so the padding of rank 1's ``fp32_flat_groups`` holds whatever bytes the memory
held before, in some runs a NaN. Both checkpoints then hold the same NaN, but NaN != NaN, so
``torch.equal`` called identical checkpoints different (a CI run failed so). The ZeRO-3 sections put
a NaN into that padding on purpose (:func:`_nan_into_zero3_padding`), so this case is tested in every
run instead of by chance.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import resource
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import torch

from fabric.checkpoint import background
from tests.strategies.deepspeed.scripts.ds_checks import (
    STAGES,
    attempt,
    equal,
    full_parameters,
    make,
    optimizer_state,
    setup_net,
    train_steps,
)

#: the configurations saved asynchronously; ``stage3_subgroups`` splits this rank's ZeRO-3 partition
#: into two optimizer sub-groups (partitions of 68 + 9 + 111 and 7 + 33 + 3 elements), each a view of
#: one flat buffer, as a small ``sub_group_size`` does for a large model
ASYNC_STAGES: dict[str, dict[str, Any]] = {
    "stage2": STAGES["stage2"],
    "stage3": STAGES["stage3"],
    "stage3_subgroups": {**STAGES["stage3"], "sub_group_size": 100},
    "stage2_offload": STAGES["stage2_offload"],
}

_GATE = threading.Event()
_original_run = background.AsyncSave._run


def _gated_run(self: background.AsyncSave, write: Any) -> None:
    # Test instrumentation only: hold the real write until the training thread says so.
    if not _GATE.wait(120):
        raise TimeoutError("the test never opened the gate")
    _original_run(self, write)


background.AsyncSave._run = _gated_run  # type: ignore[method-assign]


def _limit_file_size(limit: int | None) -> None:
    """Writes past ``limit`` bytes fail with EFBIG (``None``: lift the limit again)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # instead of killing the process
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))


def _nan_into_zero3_padding(optimizer: Any) -> int:
    """Put a NaN into each padding element of this rank's ZeRO-3 fp32 partitions; return how many.

    Test instrumentation: DeepSpeed leaves that padding uninitialized, so it holds a NaN in some runs
    and not in others; here it holds one in every run. The padding takes no part in training (its
    gradient is zero and no parameter is gathered from it), so the run is otherwise unchanged.
    """
    zero = optimizer.optimizer  # fabric's wrapper -> DeepSpeed's ZeRO-3 optimizer
    count = 0
    for flat, params, paddings in zip(
        zero.fp32_partitioned_groups_flat, zero.fp16_groups, zero.groups_padding, strict=True
    ):
        offset = 0
        for param, padding in zip(params, paddings, strict=True):
            offset += param.partition_numel()
            if padding:
                flat.data[offset - padding : offset] = float("nan")
                count += padding
    return count


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes: NaN equals the same NaN, unlike ``torch.equal``."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(_as_bytes(a), _as_bytes(b))


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _same(a: Any, b: Any, where: str, differences: list[str]) -> None:
    """Record where ``a`` and ``b`` (loaded checkpoint files) differ: every tensor, byte for byte; every value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            differences.append(f"{where}: tensor vs {type(b).__name__}")
        elif not _same_bytes(a, b):
            differences.append(f"{where}: tensors differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            differences.append(f"{where}: keys {list(a)} != {list(b)}")
            return
        for key in a:
            _same(a[key], b[key], f"{where}.{key}", differences)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            differences.append(f"{where}: {type(a).__name__}[{len(a)}] vs {type(b).__name__}[{len(b)}]")
            return
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{index}]", differences)
    elif a != b and repr(a) != repr(b):
        differences.append(f"{where}: {a!r} != {b!r}")


def _engine_files(directory: str) -> dict[str, Any]:
    """Every DeepSpeed file of a checkpoint directory, loaded (the tag's ``.pt`` files and ``latest``)."""
    files: dict[str, Any] = {}
    for name in sorted(glob.glob(os.path.join(directory, "checkpoint", "*.pt"))):
        files[os.path.basename(name)] = torch.load(name, map_location="cpu", weights_only=False)
    files["latest"] = Path(directory, "latest").read_text()
    return files


def round_trip(out_dir: str, stage: str) -> dict[str, Any]:
    fabric = make(ASYNC_STAGES[stage])
    model, optimizer = setup_net(fabric, seed=1)
    zero3 = fabric.strategy.zero_stage == 3
    nan_padding = _nan_into_zero3_padding(optimizer) if zero3 else 0
    train_steps(fabric, model, optimizer, 3, seed=11)
    sync_path, async_path = os.path.join(out_dir, f"sync_{stage}"), os.path.join(out_dir, f"async_{stage}")
    history = [1, 2]
    state = {"model": model, "optimizer": optimizer, "step": 3, "history": history}
    saved_weights, saved_optimizer = full_parameters(fabric, model), optimizer_state(optimizer)

    _GATE.clear()
    fabric.save(sync_path, state)
    pending = fabric.save(async_path, state, async_save=True)
    held = not pending.done()
    # Training goes on, changing every parameter, ZeRO's fp32 partition and Adam's moments in place,
    # while nothing of the asynchronous checkpoint is written yet.
    history.append(3)
    train_steps(fabric, model, optimizer, 2, seed=99)
    changed = not equal(full_parameters(fabric, model), saved_weights)
    _GATE.set()  # the write starts now, and the loop runs on alongside it
    train_steps(fabric, model, optimizer, 2, seed=199)
    fabric.wait_for_checkpoint()

    result: dict[str, Any] = {
        "held": held,
        "changed": changed,
        "pending_done": pending.done(),
        "nan_padding": nan_padding,
        "sub_groups": len(optimizer.optimizer.fp16_groups) if zero3 else None,
    }
    if fabric.is_global_zero:
        differences: list[str] = []
        sync_files, async_files = _engine_files(sync_path), _engine_files(async_path)
        _same(sync_files, async_files, "files", differences)
        _same(
            torch.load(os.path.join(sync_path, "meta.pt"), weights_only=False),
            torch.load(os.path.join(async_path, "meta.pt"), weights_only=False),
            "meta.pt",
            differences,
        )
        result["file_names"] = sorted(sync_files)
        result["file_differences"] = differences
        result["entries"] = sorted(os.listdir(async_path))
        result["temporaries"] = [n for n in os.listdir(out_dir) if n.startswith(".")]
    for name, path in (("sync", sync_path), ("async", async_path)):
        target_model, target_optimizer = setup_net(fabric, seed=2)
        target = {"model": target_model, "optimizer": target_optimizer, "step": 0}
        remainder = fabric.load(path, target)
        result[name] = {
            "weights_equal": equal(full_parameters(fabric, target_model), saved_weights),
            "optimizer_equal": equal(optimizer_state(target_optimizer), saved_optimizer),
            "optimizer_entries": len(saved_optimizer),
            "step": target["step"],
            "history": remainder.get("history"),
        }
    return result


def failure(out_dir: str) -> dict[str, Any]:
    fabric = make(STAGES["stage2"])
    model, optimizer = setup_net(fabric, seed=1)
    path = os.path.join(out_dir, "failing")
    fabric.save(path, {"model": model, "optimizer": optimizer, "tag": "old"})
    _GATE.clear()
    fabric.save(path, {"model": model, "optimizer": optimizer, "tag": "new"}, async_save=True)
    # From now on rank 0 cannot write a file of more than 512 bytes: its background write fails.
    if fabric.is_global_zero:
        _limit_file_size(512)
    try:
        _GATE.set()
        train_steps(fabric, model, optimizer, 1, seed=5)
        raised = attempt(fabric.wait_for_checkpoint)
    finally:
        if fabric.is_global_zero:
            _limit_file_size(None)
    again = attempt(fabric.wait_for_checkpoint)  # raised once; nothing is pending now
    remainder = fabric.load(path, {"model": model, "optimizer": optimizer})
    return {
        "raised": raised,
        "again": again,
        "tag": remainder["tag"],
        "temporaries": [n for n in os.listdir(out_dir) if n.startswith(".failing")],
    }


def main(out_dir: str) -> None:
    results: dict[str, Any] = {}
    sections = {stage: functools.partial(round_trip, out_dir, stage) for stage in ASYNC_STAGES}
    sections["failure"] = functools.partial(failure, out_dir)
    for name, section in sections.items():
        try:
            results[name] = section()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    fabric = make(STAGES["stage2"])
    Path(out_dir, f"rank{fabric.global_rank}.json").write_text(json.dumps(results, indent=1, default=str))

    # An error nobody waited for must not be lost: exit non-zero with its message.
    model, optimizer = setup_net(fabric, seed=1)
    _GATE.clear()
    fabric.save(os.path.join(out_dir, "at_exit"), {"model": model, "optimizer": optimizer}, async_save=True)
    if fabric.is_global_zero:
        _limit_file_size(512)
    _GATE.set()


if __name__ == "__main__":
    main(sys.argv[1])
