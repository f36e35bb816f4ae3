"""Single-file checkpoint I/O: saves that cannot destroy the last good checkpoint, reads that refuse bad ones.

Two facts about plain ``torch.save`` / ``torch.load`` shape this module:

* ``torch.save(obj, path)`` truncates ``path`` first and then streams into it. A crash, a full disk, a
  ``KeyboardInterrupt`` or an object that fails to pickle halfway leaves a broken file where the last good
  checkpoint used to be. :func:`atomic_save` writes a temporary file next to the target and renames it over
  the target only once the data is on disk, so the target is always either the old or the new checkpoint.
* ``torch.save`` writes a zip archive that carries a CRC-32 per record, but PyTorch's reader (miniz, built
  with ``MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS``) never checks it: a flipped byte inside tensor data loads
  silently as a wrong number. :func:`safe_load` checks every record's CRC with :mod:`zipfile` and returns
  nothing from a file that fails the check. The records that steer the load (the pickle, the version,
  the byte order) are checked before ``torch.load`` starts; the tensor bytes, which are most of the file,
  are checked on a second thread while ``torch.load`` reads them (``zlib.crc32`` and file reads release
  the GIL), through a second handle on the same inode, so a concurrent :func:`atomic_save` cannot swap
  the file between the check and the load.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import secrets
import socket
import stat
import threading
import zipfile
from typing import IO, Any, TypeAlias

import torch
from torch.serialization import MAP_LOCATION

from fabric.checkpoint import reclaim

__all__ = [
    "CheckpointError",
    "NotACheckpointError",
    "NotAFileError",
    "atomic_save",
    "fsync_directory",
    "safe_load",
    "verify_file",
]

# Whatever torch.load accepts: a device, a device string, a {from: to} dict, or a callable on storages.
MapLocation: TypeAlias = MAP_LOCATION

# Large enough that the per-call overhead of zipfile disappears next to zlib.crc32, small enough to stay
# negligible next to the state being verified.
_VERIFY_CHUNK_BYTES = 4 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
_DOS_DIRECTORY_ATTRIBUTE = 0x10
# Keeps `.{name}.tmp-{host}-{pid}-{token}` under the usual 255-byte file name limit.
_MAX_NAME_IN_TEMP = 120
_MAX_HOST_IN_TEMP = 40
_TOKEN_HEX_CHARS = 16

_RESTORE_HINT = "It cannot be loaded; restore it from a backup or re-create it."
_GLOBAL_IN_TORCH_MESSAGE = re.compile(r"GLOBAL (\S+)")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be trusted: it is corrupted, truncated, or unsafe to unpickle.

    The message always names the file and the next step. The low-level exception, when there is one, is
    kept as ``__cause__``.
    """


class NotACheckpointError(CheckpointError, ValueError):
    """The path holds something, but no checkpoint fabric can read (e.g. a directory without shards).

    A ``ValueError`` too, as Lightning raises for the same mistake, so ported error handling still works.
    """


class NotAFileError(IsADirectoryError, ValueError):
    """A single-file checkpoint was expected at a path that holds a directory, a device, a pipe or a socket.

    A ``ValueError`` too, as Lightning raises for the same mistake, so ported error handling still works.
    """


def _refuse_non_regular(path: str, display: str, action: str) -> None:
    """Raise :class:`NotAFileError` when ``path`` exists and is not a regular file.

    Saving renames a new file over the target, which would replace a device (``/dev/null``) or a named
    pipe; loading would block forever on a pipe. Neither is ever what the user meant.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        hint = (
            "Pass a file path inside it instead, e.g. 'checkpoints/last.pt'."
            if action == "save"
            else "Pass the path of a file written by `fabric.save`/`torch.save`; a sharded checkpoint "
            "directory is loaded with `fabric.load`."
        )
        raise NotAFileError(
            errno.EISDIR, f"Cannot {action} a checkpoint file at '{display}': it is a directory. {hint}"
        )
    raise NotAFileError(
        errno.EINVAL,
        f"Cannot {action} a checkpoint file at '{display}': it is not a regular file (a device, pipe or socket). "
        "Choose another path.",
    )


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries to disk, so that a rename or a new file inside it survives a power loss.

    ``os.replace`` is atomic, but the new directory entry lives in the page cache until the directory itself
    is synced. Platforms that cannot open a directory (Windows) skip this silently: there is nothing more
    this process can do there, and failing the save over it would lose the checkpoint that was just written.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_directory(directory: str, path: str) -> None:
    """``os.makedirs(directory)`` for the checkpoint ``path``, with an error that names what is in the way.

    A file where a directory of the path should be makes ``makedirs`` fail with a bare ``[Errno 17]``
    that says neither which part of the path nor what to do.
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        blocker = directory
        while blocker and not os.path.lexists(blocker):
            blocker = os.path.dirname(blocker)
        probe = directory
        while probe and probe != os.path.dirname(probe):
            if os.path.lexists(probe) and not os.path.isdir(probe):
                blocker = probe
            probe = os.path.dirname(probe)
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"Cannot save the checkpoint '{path}': '{blocker}' is a file, not a directory, so the directory "
            f"'{directory}' cannot be created. Choose another path, or move that file away.",
        ) from error


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Save ``obj`` with ``torch.save`` so that ``path`` always holds either the old or the new checkpoint.

    The object is streamed into a uniquely named temporary file in the same directory (a rename is only
    atomic within one file system), the file is fsynced, renamed over ``path`` with ``os.replace`` and the
    directory is fsynced. The replaced checkpoint's disk space is freed in a background thread
    (:mod:`fabric.checkpoint.reclaim`), not on the caller's time. If anything fails before the rename (an object that raises while pickled, a full
    disk, ``KeyboardInterrupt``) the temporary file is removed, the exception propagates, and the previous
    checkpoint at ``path`` is untouched. Memory stays near the size of the state: nothing is buffered.

    Temporary files left behind by processes that were killed mid-save are removed on the next save to the
    same path, but only those written from this host by a process that no longer exists.

    If ``path`` is a symbolic link, the file it points to is replaced, as ``torch.save`` would write there.

    Example::

        atomic_save({"model": model.state_dict(), "step": step}, "checkpoints/last.pt")
    """
    target = os.path.realpath(os.fspath(path))
    _refuse_non_regular(target, os.fspath(path), "save")
    directory, name = os.path.split(target)
    make_directory(directory, os.fspath(path))
    _remove_stale_temp_files(directory, name)

    reclaim.wait()  # the space of the checkpoint replaced last time is free before this one is written

    fd, temp_path = _create_temp_file(directory, name)
    previous = reclaim.hold(target)  # the checkpoint this save replaces, if any
    reclaim.drop_cached_pages(previous)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, target)
    except BaseException as error:
        # BaseException on purpose: a KeyboardInterrupt mid-save must not leave a half-written temp file.
        if previous is not None:
            os.close(previous)
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        os_error = _os_error_behind(error)
        if os_error is None:
            raise
        raise OSError(
            os_error.errno,
            f"Could not write the checkpoint '{os.fspath(path)}' ({os_error.strerror or os_error}). The "
            "previous checkpoint at that path, if any, is unchanged. Check free disk space, the file size "
            "limit and permissions there, or save to another directory.",
        ) from error
    fsync_directory(directory)
    # The old checkpoint has no name any more; freeing its blocks is off the caller's time (see reclaim).
    reclaim.release(previous)


def safe_load(
    path: str | os.PathLike[str],
    map_location: MapLocation = "cpu",
    weights_only: bool = True,
    verify: bool = True,
) -> Any:
    """Load a checkpoint written by ``torch.save``, refusing corrupted, truncated or unsafe files.

    With ``verify=True`` every record of the zip archive is read once and its CRC-32 compared with the one
    recorded at save time, because ``torch.load`` itself does not check it and would return corrupted
    tensor values without complaint; nothing is returned from a file that fails. The small records that
    steer the load (the pickle, which holds every tensor's size and type) are checked first; with
    ``weights_only=True`` the tensor bytes are then checked on a second thread while ``torch.load`` runs,
    so on a machine with a free core the check adds little to the load's wall time (``benchmarks/``). It
    costs one extra streaming read of the file and no extra memory. Files in the legacy non-zip format
    (``_use_new_zipfile_serialization=False``) carry no checksum and are loaded unverified.

    ``weights_only=True`` restricts unpickling to tensors, containers and primitive types, so a crafted file
    cannot run code while it is loaded. Pass ``weights_only=False`` only for files from a source you trust.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        NotAFileError: ``path`` is a directory, a device or a pipe, not a single-file checkpoint.
        CheckpointError: the file is corrupted, truncated, not a PyTorch checkpoint, or (with
            ``weights_only=True``) contains arbitrary Python objects.

    Example::

        state = safe_load("checkpoints/last.pt")
        model.load_state_dict(state["model"])
    """
    display = os.fspath(path)
    _refuse_non_regular(display, display, "load")
    try:
        file = open(display, "rb")  # noqa: SIM115 -- closed below, after both the check and the load
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            f"No checkpoint file at '{display}'. Check the path, or save a checkpoint there first.",
        ) from None
    with file:
        if verify and weights_only and _starts_with_zip_magic(file):
            return _load_while_verifying(file, display, map_location)
        return load_verified(
            file, display, map_location=map_location, weights_only=weights_only, verify=verify
        )


def verify_file(path: str | os.PathLike[str]) -> None:
    """Check a single-file checkpoint's integrity (every zip record's CRC-32) without loading it.

    Reads the file once and allocates nothing beyond a read buffer; a legacy non-zip file, which carries
    no checksum, is loaded instead (``weights_only=True``) as the only way to tell whether it is whole.
    """
    display = os.fspath(path)
    _refuse_non_regular(display, display, "load")
    with open(display, "rb") as file:
        if _starts_with_zip_magic(file):
            _verify_zip_archive(file, display)
            return
    safe_load(display)


def load_verified(
    file: IO[bytes],
    display: str,
    map_location: MapLocation = "cpu",
    weights_only: bool = True,
    verify: bool = True,
) -> Any:
    """:func:`safe_load` on an open, seekable binary file (``display`` names it in errors)."""
    is_zip = _starts_with_zip_magic(file)
    if verify and is_zip:
        _verify_zip_archive(file, display)
    file.seek(0)
    try:
        return torch.load(file, map_location=map_location, weights_only=weights_only)
    except Exception as error:
        verified = verify and is_zip
        raise _load_error(error, file, display, weights_only=weights_only, verified=verified) from error


def _create_temp_file(directory: str, name: str) -> tuple[int, str]:
    """Create an empty, exclusively owned temporary file next to the target and return its fd and path.

    ``O_EXCL`` makes a name collision (however unlikely with 64 random bits) a retry instead of two writers
    sharing one file. The file gets the default permissions under the umask, like ``torch.save``'s output,
    rather than ``tempfile.mkstemp``'s private 0o600, because it becomes the checkpoint.
    """
    prefix = _temp_prefix(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        token = secrets.token_hex(_TOKEN_HEX_CHARS // 2)
        temp_path = os.path.join(directory, f"{prefix}{_host_tag()}-{os.getpid()}-{token}")
        try:
            return os.open(temp_path, flags, 0o666), temp_path
        except FileExistsError:
            continue


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError (disk full, file too large) that a torch.save failure hides, if there is one.

    ``torch.save`` reports a failed write as an opaque ``RuntimeError`` ("unexpected pos ...") raised while
    handling the real ``OSError``. Surfacing the ``OSError`` lets callers catch disk problems by type and
    tells the user what to fix. Anything that is not an Exception (KeyboardInterrupt) passes through as is.
    """
    if not isinstance(error, Exception):
        return None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _temp_prefix(name: str) -> str:
    return f".{name[:_MAX_NAME_IN_TEMP]}.tmp-"


def _host_tag() -> str:
    """This host's name, reduced to characters that are safe in a file name on every platform."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:_MAX_HOST_IN_TEMP] or "host"


def _remove_stale_temp_files(directory: str, name: str) -> None:
    """Delete temporary files for this target that a killed process left behind.

    A crash mid-save leaves a temp file as large as the checkpoint; repeated crashes would fill the disk.
    Only files from this host whose writer process no longer exists are removed: on a shared file system
    another node (or a live process here) may be writing one right now, and deleting it would make that
    save fail. Windows is skipped because ``os.kill(pid, 0)`` terminates the process there.
    """
    if os.name == "nt":
        return
    pattern = re.compile(
        re.escape(_temp_prefix(name)) + rf"(?P<host>.+)-(?P<pid>[0-9]+)-[0-9a-f]{{{_TOKEN_HEX_CHARS}}}"
    )
    host = _host_tag()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _process_exists(pid):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        # EPERM: it exists but belongs to someone else. Anything else: err on the side of keeping the file.
        return True
    return True


def _starts_with_zip_magic(file: IO[bytes]) -> bool:
    """Whether the file is in the zip format, decided the same way ``torch.load`` decides it."""
    file.seek(0)
    magic = file.read(len(_ZIP_MAGIC))
    file.seek(0)
    return magic == _ZIP_MAGIC


def _load_while_verifying(file: IO[bytes], display: str, map_location: MapLocation) -> Any:
    """``torch.load(weights_only=True)`` of a zip checkpoint while a second thread checks its tensor bytes.

    The records that steer the load (``data.pkl`` with every tensor's size, type and record key, the
    version, the byte order) are verified first, on this thread, so ``torch.load`` never sizes an
    allocation from a corrupted pickle. A flipped byte in tensor data can then only make the load return
    wrong values, and those are never returned: the result is dropped and the CRC error raised. The second
    handle must be the same inode as ``file`` (an :func:`atomic_save` may have replaced the path since it was
    opened); if it is not, the check runs on ``file`` before the load, as for any other input.
    """
    _verify_zip_archive(file, display, data=False)
    try:
        twin = open(display, "rb")  # noqa: SIM115 -- closed by the checking thread
    except OSError:
        twin = None
    if twin is None or not _same_file(file, twin):
        if twin is not None:
            twin.close()
        return load_verified(file, display, map_location=map_location, weights_only=True, verify=True)
    failure: list[CheckpointError] = []

    def check() -> None:
        with twin:
            try:
                _verify_zip_archive(twin, display, metadata=False)
            except CheckpointError as error:
                failure.append(error)

    checker = threading.Thread(target=check, name="fabric-checkpoint-crc", daemon=True)
    checker.start()
    file.seek(0)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:
        checker.join()
        if failure:
            raise failure[0] from error
        raise _load_error(error, file, display, weights_only=True, verified=True) from error
    checker.join()
    if failure:
        del state
        raise failure[0]
    return state


def _same_file(first: IO[bytes], second: IO[bytes]) -> bool:
    """Whether two open handles are the same file on disk (same device and inode)."""
    try:
        a, b = os.fstat(first.fileno()), os.fstat(second.fileno())
    except (OSError, AttributeError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _is_tensor_record(name: str) -> bool:
    """A record of tensor bytes (``<archive>/data/<key>``), as opposed to one that steers the load."""
    parts = name.split("/")
    return len(parts) >= 3 and parts[1] == "data"


def _verify_zip_archive(file: IO[bytes], display: str, *, metadata: bool = True, data: bool = True) -> None:
    """Read every record once, in chunks, letting :mod:`zipfile` compare each CRC-32 with the recorded one.

    Reading through :class:`zipfile.ZipInfo` objects (not names) checks every record, duplicates included,
    and :mod:`zipfile` also checks that each local header matches the central directory. Any failure, of
    whatever type (``BadZipFile``, ``EOFError``, ``zlib.error``, an unsupported compression method), means
    the archive is not what ``torch.save`` wrote. ``metadata``/``data`` select the records that steer the
    load and the tensor-byte records; the central directory and the directory flags are checked either way.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            records = archive.infolist()
            if not records:
                raise zipfile.BadZipFile("the archive has no records")
            for record in records:
                # PyTorch's reader treats a record flagged as a directory (in its name or its DOS attributes,
                # which no CRC covers) as empty and returns an unfilled buffer; torch.save never writes one.
                if record.filename.endswith("/") or record.external_attr & _DOS_DIRECTORY_ATTRIBUTE:
                    raise zipfile.BadZipFile(f"record {record.filename!r} is marked as a directory")
                if not (data if _is_tensor_record(record.filename) else metadata):
                    continue
                with archive.open(record) as stream:
                    while stream.read(_VERIFY_CHUNK_BYTES):
                        pass
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint file '{display}' is corrupted or truncated ({type(error).__name__}: {error}). "
            + _RESTORE_HINT
        ) from error


def _load_error(
    error: Exception, file: IO[bytes], display: str, *, weights_only: bool, verified: bool
) -> CheckpointError:
    """Turn whatever ``torch.load`` raised into a CheckpointError that says what went wrong and what to do."""
    unsafe = _unsafe_globals(error, file, verified=verified) if weights_only else None
    if unsafe is not None:
        found = f" ({', '.join(unsafe)})" if unsafe else ""
        message = (
            f"Checkpoint file '{display}' contains arbitrary Python objects{found} that `weights_only=True` "
            "refuses to load, because unpickling them could run code. If, and only if, you trust the source "
            "of this file, load it with `safe_load(..., weights_only=False)`; otherwise do not load it."
        )
    elif verified:
        message = (
            f"Checkpoint file '{display}' passed its integrity check but could not be loaded "
            f"({type(error).__name__}: {error}). If the error names a device, pass a `map_location` that "
            "exists on this machine; if the file was written by another tool or a newer PyTorch, load it "
            "there. Otherwise restore it from a backup or re-create it."
        )
    else:
        message = (
            f"Checkpoint file '{display}' could not be loaded ({type(error).__name__}: {error}). It is "
            "corrupted, truncated, or not a PyTorch checkpoint (its integrity was not verified: it is not a "
            "zip archive, or `verify=False` was passed). " + _RESTORE_HINT
        )
    return CheckpointError(message)


def _unsafe_globals(error: Exception, file: IO[bytes], *, verified: bool) -> list[str] | None:
    """The Python objects that made the restricted unpickler refuse the file, or None if that was not why.

    ``torch.load`` reports every restricted-unpickler failure as an ``UnpicklingError`` starting with
    "Weights only load failed", including garbage in an unverified file. The refused objects are taken from
    that message and, for zip files, from a static scan of the pickle (which executes nothing).
    """
    if not isinstance(error, pickle.UnpicklingError) or "Weights only load failed" not in str(error):
        return None
    names = set(_GLOBAL_IN_TORCH_MESSAGE.findall(str(error)))
    if _starts_with_zip_magic(file):
        with contextlib.suppress(Exception):
            names.update(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    if verified:
        # The pickle passed its CRC check, so a refusal is about its contents even without a named global.
        return sorted(names)
    return sorted(names) if names else None
