"""Where single-file checkpoints are stored: the ``CheckpointIO`` plugin interface and the built-in one.

``Fabric(plugins=[MyCheckpointIO()])`` replaces how a checkpoint dict becomes bytes in storage and back,
as in Lightning; everything above it (what goes into the dict, resume state, restoring objects) stays the
same. The built-in :class:`TorchCheckpointIO` writes local files atomically and verifies them on load
(:mod:`fabric.checkpoint.io`), and reaches remote storage (``s3://``, ``gs://``, ``memory://``, ...)
through ``fsspec`` when the path has a protocol:

* object stores (S3, GCS, Azure) make an object visible only once its upload completes, so one ``put``
  is atomic: a reader sees the old checkpoint or the new one, never a partial one;
* other file systems get the data under a temporary name first, then a rename (``fs.mv``); where the
  file system's rename is atomic, so is the save.

Loads from every store go through the same checksum and ``weights_only`` checks as local files.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import tempfile
from abc import ABC, abstractmethod
from typing import Any

import torch

from fabric.checkpoint.io import MapLocation, atomic_save, load_verified, safe_load
from fabric.utilities.cloud_io import is_remote

#: protocols whose uploads become visible whole or not at all
_ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})


class CheckpointIO(ABC):
    """How a checkpoint dict is written to and read from storage (Lightning's plugin interface)."""

    @abstractmethod
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path``."""

    @abstractmethod
    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool = True) -> Any:
        """Read the checkpoint at ``path``."""

    @abstractmethod
    def remove_checkpoint(self, path: Any) -> None:
        """Delete the checkpoint at ``path``."""

    def teardown(self) -> None:
        """Release whatever the plugin holds (connections, threads)."""


def _filesystem(path: str) -> tuple[Any, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError as error:  # pragma: no cover - torch depends on fsspec
        raise ImportError(
            f"Saving to or loading from '{path}' needs fsspec: `pip install torch-fabric[remote]` (plus the "
            f"package of your store, e.g. s3fs or gcsfs)."
        ) from error
    return url_to_fs(path)


class TorchCheckpointIO(CheckpointIO):
    """``torch.save`` files, written atomically and verified on load; local or through fsspec."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"TorchCheckpointIO.save_checkpoint(storage_options={storage_options!r}): this plugin takes no "
                f"storage options. Pass them in a custom CheckpointIO plugin."
            )
        if is_remote(path):
            _save_remote(checkpoint, os.fspath(path))
        else:
            atomic_save(checkpoint, _local(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool = True) -> Any:
        location: MapLocation = map_location if map_location is not None else "cpu"
        if is_remote(path):
            fs, remote = _filesystem(os.fspath(path))
            if not fs.exists(remote):
                raise FileNotFoundError(f"No checkpoint at '{os.fspath(path)}'.")
            with fs.open(remote, "rb") as file:
                buffer = io.BytesIO(file.read())
            return load_verified(buffer, os.fspath(path), map_location=location, weights_only=weights_only)
        return safe_load(_local(path), map_location=location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        if is_remote(path):
            fs, remote = _filesystem(os.fspath(path))
            if fs.exists(remote):
                fs.rm(remote, recursive=True)
            return
        local = _local(path)
        if os.path.isdir(local):
            shutil.rmtree(local)
        elif os.path.lexists(local):
            os.remove(local)


def _local(path: Any) -> str:
    text = os.fspath(path)
    return text[len("file://") :] if text.startswith("file://") else text


def _save_remote(checkpoint: dict[str, Any], path: str) -> None:
    """Serialize locally (nothing half-written ever reaches the store), then one put, or put + rename."""
    fs, remote = _filesystem(path)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "checkpoint.pt")
        torch.save(checkpoint, local)
        parent = remote.rsplit("/", 1)[0] if "/" in remote else ""
        if parent:
            with contextlib.suppress(Exception):
                fs.makedirs(parent, exist_ok=True)
        if _ATOMIC_PUT_PROTOCOLS.intersection(protocols):
            fs.put_file(local, remote)
            return
        temporary = f"{remote}.tmp-{secrets.token_hex(8)}"
        fs.put_file(local, temporary)
        try:
            fs.mv(temporary, remote)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(temporary)
            raise


__all__ = ["CheckpointIO", "TorchCheckpointIO", "is_remote"]
