"""DeepSpeed's checkpoint directory, as Fabric writes it: format checks, safe reading, consolidation.

Layout::

    ckpt/
      checkpoint/                 # DeepSpeed's own files (``engine.save_checkpoint(tag="checkpoint")``)
      latest
      meta.pt                     # plain values, resume state, which state keys held the model/optimizer
      fabric-manifest.json        # size and CRC-32 of every file; written last

The strategy (``fabric.strategies.deepspeed``) writes and loads it through its engine; this module is
what any process can do with one without an engine: recognise it, check it, and consolidate it into
one file (which is also how a non-DeepSpeed run loads it). DeepSpeed itself is imported only inside
:func:`consolidate_deepspeed`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from fabric.checkpoint.io import CheckpointError, atomic_save, safe_load
from fabric.utilities.types import PathLike

#: DeepSpeed's tag (sub-directory) inside our checkpoint directory
TAG = "checkpoint"
#: our file beside DeepSpeed's: plain values and per-rank resume state
META_FILE = "meta.pt"
#: key in meta.pt that says which state keys held the model and the optimizer
DEEPSPEED_KEY = "__fabric_deepspeed__"

_INSTALL_HINT = "pip install torch-fabric[deepspeed]"


def deepspeed_available() -> bool:
    """Whether ``import deepspeed`` can succeed (checked without importing it)."""
    try:
        return importlib.util.find_spec("deepspeed") is not None
    except (ValueError, ImportError):
        return False


def is_deepspeed_checkpoint(path: PathLike) -> bool:
    """Whether ``path`` is a checkpoint directory written by :class:`DeepSpeedStrategy`."""
    return (
        os.path.isdir(path)
        and os.path.isdir(os.path.join(path, TAG))
        and os.path.isfile(os.path.join(path, META_FILE))
    )


def resolve_deepspeed_checkpoint(path: PathLike) -> str:
    """``path``, or the previous version that a save killed between its two renames left aside."""
    from fabric.checkpoint.sharded import resolve_checkpoint_path

    path = resolve_checkpoint_path(path, accept=is_deepspeed_checkpoint)
    if not is_deepspeed_checkpoint(path):
        raise CheckpointError(
            f"'{path}' is not a DeepSpeed checkpoint directory written by Fabric (it needs '{TAG}/' and "
            f"'{META_FILE}'). Pass the directory `fabric.save` wrote under DeepSpeedStrategy."
        )
    return path


def _read_meta(directory: str, weights_only: bool) -> dict[str, Any]:
    from fabric.checkpoint.pipeline import Checkpointer

    return Checkpointer.read_meta(directory, weights_only)


def _read_whole_checkpoint(directory: str, weights_only: bool = True) -> dict[str, Any]:
    """Everything in a DeepSpeed directory as one dict of full tensors (``fabric.load(path)`` without state)."""
    import tempfile

    from fabric.checkpoint.pipeline import RESERVED_KEYS

    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "full.pt")
        consolidate_deepspeed(directory, target, weights_only=weights_only)
        checkpoint = safe_load(target, map_location="cpu")
    for key in RESERVED_KEYS:
        checkpoint.pop(key, None)
    return checkpoint


#: what DeepSpeed's own checkpoint files may reference beyond tensors and containers
_DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.checkpoint.constants",
)


def check_engine_files(directory: str) -> None:
    """Refuse a DeepSpeed directory whose files hold more than tensors, containers and DeepSpeed's own records.

    DeepSpeed reads its files with ``torch.load(weights_only=False)``, so a crafted file would run code.
    Each file is first opened with ``torch.load(weights_only=True)``, admitting only the few DeepSpeed
    classes its checkpoints contain; anything else is an error before DeepSpeed reads a byte.
    """
    import torch.serialization

    root = os.path.join(directory, TAG)
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        unsafe = [
            g
            for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if not g.startswith(_DEEPSPEED_SAFE_GLOBALS)
        ]
        if unsafe:
            raise CheckpointError(
                f"The DeepSpeed checkpoint file '{path}' references Python objects beyond DeepSpeed's own checkpoint "
                f"records ({', '.join(sorted(unsafe))}); loading it could run code, so it was refused. If, and only "
                f"if, you trust the source of this checkpoint, load it with `weights_only=False`."
            )


def consolidate_deepspeed(directory: PathLike, output: PathLike, weights_only: bool = True) -> None:
    """Turn a DeepSpeed checkpoint directory into one file that ``torch.load`` and any strategy's ``Fabric.load`` read.

    The model's weights are merged from the ZeRO partitions into full float32 tensors (DeepSpeed's
    ``get_fp32_state_dict_from_zero_checkpoint``) and stored under the key the model had in
    ``fabric.save``'s state; the plain values and the per-rank resume state come along. The optimizer
    state is not consolidated (ZeRO's layout is its own): resume the optimizer from the directory.
    Runs on one process, without a process group.
    """
    if not deepspeed_available():
        raise ModuleNotFoundError(
            f"Consolidating a DeepSpeed checkpoint needs the `deepspeed` package to read ZeRO's partitions: "
            f"`{_INSTALL_HINT}`."
        )
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from fabric.checkpoint.pipeline import check_directory_alone

    directory = resolve_deepspeed_checkpoint(directory)
    check_directory_alone(directory)
    if weights_only:
        check_engine_files(directory)
    meta = _read_meta(directory, weights_only=weights_only)
    info = meta.pop(DEEPSPEED_KEY, {}) or {}
    module_key = info.get("module") or "model"
    weights = get_fp32_state_dict_from_zero_checkpoint(directory, tag=TAG)
    checkpoint = dict(meta)
    checkpoint[module_key] = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    atomic_save(checkpoint, output)
