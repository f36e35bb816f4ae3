"""Checksums taken while a checkpoint's bytes are written, instead of reading every file back afterwards.

A sharded save used to write its files (DCP's shards, its ``.metadata``, ``meta.pt``) and then read all of
them again to compute the CRC-32s of the manifest: at 2 processes on 2 cores that second pass cost about
0.45x of a raw DCP save. Here the CRC-32 runs over each buffer as it goes to the file, while it is still
in the CPU's caches, and no byte is read back.

What the manifest records stays what it was: each file's size and CRC-32 (``zlib.crc32``), so
checkpoints written before and after this change verify the same way. A stream only vouches for a file
it wrote from start to end in order: if anything moved the file position (a ``seek``) or the size on
disk differs from the bytes it counted when it closes, it records nothing for that file and the saving
code falls back to reading the file (see :func:`fabric.checkpoint.pipeline.Checkpointer.write_directory`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import zlib
from collections.abc import Iterator
from typing import IO, Any, cast

import torch

from fabric.checkpoint.io import _os_error_behind

#: ``{relative file name: {"size": bytes, "crc32": CRC-32}}``, the manifest's record of each file
Records = dict[str, dict[str, int]]


class ChecksumStream:
    """A binary write stream that passes every buffer to ``raw`` and keeps the CRC-32 and size of what passed."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.crc = 0
        self.size = 0
        self.in_order = True
        self._record: dict[str, int] | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if not view.nbytes:
            return 0  # nothing to write (and an empty multi-dimensional view cannot be cast)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")  # a tensor's buffer: its bytes, whatever its element type
        written = self._raw.write(view)
        count = view.nbytes if written is None else written
        # a raw stream may take part of a buffer: only what it took is the file's
        self.crc = zlib.crc32(view if count == view.nbytes else view[:count], self.crc)
        self.size += count
        return count

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # Moving back would make the running CRC describe bytes that are no longer the file's.
        self.in_order = False
        return int(self._raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self._raw.tell())

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        # DCP closes its streams itself, before the ``with`` that opened them ends: measure first.
        if not self._raw.closed:
            self._record = self._measure()
        self._raw.close()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    def record(self) -> dict[str, int] | None:
        """The file's size and CRC-32, or ``None`` when this stream cannot vouch for every byte of it."""
        return self._record if self._raw.closed else self._measure()

    def _measure(self) -> dict[str, int] | None:
        if not self.in_order:
            return None
        try:
            self._raw.flush()
            on_disk = os.fstat(self._raw.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            return None
        return {"size": self.size, "crc32": self.crc} if on_disk == self.size else None


class Recorder:
    """Collects the records of the files written into one directory, from any number of writer threads."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.records: Records = {}
        self._lock = threading.Lock()

    def name_of(self, path: str | os.PathLike[str]) -> str:
        return os.path.relpath(os.path.abspath(os.fspath(path)), self.directory).replace(os.sep, "/")

    @contextlib.contextmanager
    def stream(self, path: str | os.PathLike[str]) -> Iterator[ChecksumStream]:
        """Open ``path`` for writing; on a clean close its record is kept (a failed write keeps none)."""
        name = self.name_of(path)
        with self._lock:
            self.records.pop(name, None)
        with open(path, "wb") as raw:
            stream = ChecksumStream(raw)
            yield stream
            record = stream.record()
        if record is not None:
            with self._lock:
                self.records[name] = record

    def renamed(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        """A file was renamed inside the directory: its record follows it."""
        with self._lock:
            record = self.records.pop(self.name_of(path), None)
            if record is not None:
                self.records[self.name_of(new_path)] = record


def save_checksummed(obj: Any, path: str, recorder: Recorder) -> None:
    """``torch.save`` ``obj`` to a new file in a directory not yet committed, fsynced, its record kept.

    No temporary file and rename: the directory is swapped in as a whole later, which is what makes the
    save atomic.
    """
    with recorder.stream(path) as stream:
        torch.save(obj, cast(IO[bytes], stream))
        stream.flush()
        os.fsync(stream.fileno())


def dcp_writer(directory: str, recorder: Recorder | None = None) -> Any:
    """DCP's file writer, failing with the ``OSError`` (disk full, file too large) behind a failed write.

    With a ``recorder``, every file it writes goes through a checksumming stream (DCP's ``FileSystem``
    hook, ``create_stream``), and a rename (``.metadata.tmp`` to ``.metadata``) carries the record along.

    ``torch.save`` reports a failed write as ``RuntimeError: ... unexpected pos`` with the ``OSError`` as
    its context; DCP then sends each rank's failure to every rank pickled, and pickling drops the
    context. Raised here, on the rank that wrote, the ``OSError`` itself travels (it pickles with its
    errno), and the save pipeline turns it into the ``OSError`` a single-file save raises.
    """
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystem

    class _RecordingFileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            if mode != "wb" or recorder is None:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with recorder.stream(path) as stream:
                yield stream

        def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
            super().rename(path, new_path)
            if recorder is not None:
                recorder.renamed(path, new_path)

    class _Writer(FileSystemWriter):
        def __init__(self) -> None:
            super().__init__(directory)
            self.fs = _RecordingFileSystem()

        def write_data(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().write_data(*args, **kwargs)
            except Exception as error:
                os_error = _os_error_behind(error)
                if os_error is None or os_error is error:
                    raise
                raise OSError(os_error.errno, os_error.strerror or str(os_error)) from error

    return _Writer()


__all__ = ["ChecksumStream", "Recorder", "Records", "dcp_writer", "save_checksummed"]
