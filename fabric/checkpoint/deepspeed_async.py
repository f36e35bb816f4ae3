"""Asynchronous saves of DeepSpeed checkpoints: the engine's files snapshotted to CPU, written in the background.

DeepSpeed writes its checkpoint itself (``engine.save_checkpoint``): it gathers what each rank holds
(module states, its ZeRO optimizer partition), names the files, and hands each one to its
*checkpoint engine* (``engine.checkpoint_engine``, a ``deepspeed.runtime.checkpoint_engine``
``CheckpointEngine``: ``create``, ``save(state_dict, path)``, ``commit``), the extension point
DeepSpeed provides to replace how checkpoint files are persisted. For the duration of one save call
we plug in :class:`SnapshotCheckpointEngine`: its ``save`` copies the state to CPU memory and
records where it goes, nothing more. So everything DeepSpeed does on the training thread (its
collectives, tag validation, which rank saves which file) runs unchanged, and the call returns once
the copies are taken; the copies are then written in the background thread as the engine's own writer
(``TorchCheckpointEngine``) writes them: ``torch.save`` with the configured serialization (into an
open file, so that a full disk is an ``OSError`` naming its cause, not a bare ``RuntimeError``).

Why not DeepSpeed's own ``DecoupledCheckpointEngine`` (config ``checkpoint.writer.decoupled``)? It
sends the live tensors to a writer process through shared memory (on a CPU that shares, not copies,
so training changes what is written), needs DeepSpeed's compiled async-I/O op, commits only at a
later ``engine.step()``, and writes ``latest`` in place: none of our guarantees (values at the call,
one error raised on every rank, an atomic directory swap) would hold.

The few files DeepSpeed writes directly, not through its checkpoint engine (``latest``,
``zero_to_fp32.py``, NVMe swap files), land in a *staging* directory on the training thread. The
background write then goes through the same atomic path as a synchronous save
(``Checkpointer.write_directory``: a temporary sibling directory, checksums, manifest, swap):
the staged files are moved in, every rank writes its copies, and the ranks agree on the outcome
before the manifest is written, so one rank's failure fails the save on every rank instead of
leaving the others waiting. The staging directory carries the temporary-directory name of the
target, so one left by a killed process is removed by a later save like any other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine import CheckpointCommitInfo, TorchCheckpointEngine
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

from fabric.checkpoint.background import snapshot
from fabric.checkpoint.io import CheckpointError


class SnapshotCheckpointEngine(CheckpointEngine):
    """A DeepSpeed checkpoint engine that takes CPU copies of the files instead of writing them.

    ``files`` lists, in the order DeepSpeed saved them, each file's path relative to ``save_dir``
    and the copy of its state. Loading goes to ``writer`` (the engine's own checkpoint engine).
    """

    def __init__(self, save_dir: str, writer: CheckpointEngine) -> None:
        super().__init__(None)
        self.name = "FabricSnapshotCheckpointEngine"
        self.files: list[tuple[str, Any]] = []
        self._root = os.path.abspath(save_dir)
        self._writer = writer

    def create(self, info: CheckpointCommitInfo) -> None:
        pass

    def save(self, state_dict: Any, path: str) -> None:
        relative = os.path.relpath(os.path.abspath(path), self._root)
        if relative.startswith(os.pardir) or os.path.isabs(relative):
            raise CheckpointError(
                f"DeepSpeed saved a checkpoint file outside the checkpoint directory ('{path}', directory "
                f"'{self._root}'); an asynchronous save cannot place it. Save synchronously (async_save=False)."
            )
        self.files.append((relative, snapshot(state_dict)))

    def load(self, path: str, map_location: Any = None) -> Any:
        return self._writer.load(path, map_location=map_location)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        return True  # the background write commits, atomically, once every rank has written

    def preserves_storage_sharing(self) -> bool:
        # DeepSpeed clones views of its flat buffers for a writer that keeps storages shared
        # (torch.save); ``snapshot`` already copies every tensor compactly, so a clone would be a
        # second full copy on the training thread.
        return False


def zipfile_serialization(engine: Any) -> bool:
    """How the engine's checkpoint writer serializes, if an asynchronous save can write like it; else an error."""
    writer = engine.checkpoint_engine
    if type(writer) is not TorchCheckpointEngine:
        raise NotImplementedError(
            f"Fabric.save(async_save=True) with DeepSpeed needs DeepSpeed's default checkpoint writer "
            f"(TorchCheckpointEngine); this engine uses {type(writer).__name__} (chosen by the config's "
            f"'checkpoint' writer or 'datastates' section), which writes its own way. Remove that config "
            f"section, or save synchronously (async_save=False)."
        )
    return bool(getattr(writer, "zipfile_serialization", True))


@contextlib.contextmanager
def snapshot_engine(engine: Any, save_dir: str) -> Iterator[SnapshotCheckpointEngine]:
    """Make ``engine`` hand its checkpoint files to a :class:`SnapshotCheckpointEngine` within the block."""
    writer = engine.checkpoint_engine
    snapshotter = SnapshotCheckpointEngine(save_dir, writer)
    engine.checkpoint_engine = snapshotter
    try:
        yield snapshotter
    finally:
        engine.checkpoint_engine = writer


def background_writer(
    staging: str | None,
    files: list[tuple[str, Any]],
    zipfile: bool,
    collectives: Any,
) -> Callable[[str], None]:
    """The ``write_parts(tmp)`` of the background write; every process runs it, ``staging`` is rank 0's.

    Rank 0 moves the staged files into ``tmp``; then each rank writes its copies with ``torch.save``
    (``files`` is emptied on the way); then the ranks agree on the outcome, so that all of them fail
    together if one did.
    """

    def write_parts(tmp: str) -> None:
        error: BaseException | None = None
        try:
            if staging is not None:
                for entry in os.listdir(staging):
                    os.replace(os.path.join(staging, entry), os.path.join(tmp, entry))
        except BaseException as caught:
            error = caught
        # the staged directories (the tag's) exist in ``tmp`` before any rank writes into them
        errors = collectives.gather_object(_describe(error))
        if error is None and not any(errors):
            try:
                while files:  # each copy is let go once written: the memory falls as the write proceeds
                    relative, state = files.pop(0)
                    target = os.path.join(tmp, relative)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "wb") as file:
                        torch.save(state, file, _use_new_zipfile_serialization=zipfile)
            except BaseException as caught:
                error = caught
            errors = collectives.gather_object(_describe(error))
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
        if failed:
            where = "; ".join(f"rank {rank}: {message}" for rank, message in failed)
            raise CheckpointError(
                f"DeepSpeed's checkpoint files could not be written on another process ({where})."
            )

    return write_parts


def remove_staging(staging: str | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return "".join(traceback.format_exception_only(type(error), error)).strip()


__all__ = [
    "SnapshotCheckpointEngine",
    "background_writer",
    "remove_staging",
    "snapshot_engine",
    "zipfile_serialization",
]
