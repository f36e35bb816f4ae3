"""The sharded checkpoint directory: written with ``torch.distributed.checkpoint`` (DCP), read safely.

Layout of a checkpoint directory::

    ckpt/
      .metadata, __0_0.distcp, __1_0.distcp, ...   # DCP: the modules' and optimizers' shards
      meta.pt                                       # everything else (plain values, loader positions,
                                                    # random states, the precision's state), one file
      fabric-manifest.json                          # size and CRC-32 of every file above; written last

Every process writes its own shards, in parallel; nothing is gathered on one process. The directory
is written beside the target (``.NAME.tmp-HOST-PID-TOKEN``) and renamed over it only when complete,
so a crash mid-save leaves the previous checkpoint loadable. DCP reshards on load, so a directory
written by N processes loads into M processes, or into a plain model on one process.

Reading is where DCP alone is not safe, and this module closes three holes:

* DCP's ``FileSystemReader`` unpickles ``.metadata`` with plain ``pickle``, and its planner unpickles
  non-tensor entries with ``torch.load(weights_only=False)``: a crafted checkpoint runs code. Here the
  metadata goes through an unpickler that admits only DCP's metadata classes, and non-tensor entries
  through ``torch.load(weights_only=True)``, unless the caller trusts the files (``weights_only=False``).
* The metadata names the files to read, relative to the directory; a crafted one could name any file on
  the machine. Every name must resolve inside the directory.
* No layer of DCP checks what it reads: a flipped bit in a shard loads as a wrong weight. The manifest
  records every file's size and CRC-32 at save, and :func:`verify_files` compares them before a load.
  The CRC-32s are taken while the files are written (:mod:`fabric.checkpoint.checksummed`), not by
  reading them back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from fabric.checkpoint import reclaim
from fabric.checkpoint.checksummed import Recorder, Records, dcp_writer
from fabric.checkpoint.io import (
    CheckpointError,
    _host_tag,
    _process_exists,
    fsync_directory,
    make_directory,
)
from fabric.utilities.rank_zero import rank_zero_info

META_FILE = "meta.pt"
MANIFEST_FILE = "fabric-manifest.json"
DCP_METADATA_FILE = ".metadata"
_MANIFEST_FORMAT = "fabric-sharded-checkpoint"
_MANIFEST_VERSION = 1
_OLD_TAG = ".old-"
_TMP_TAG = ".tmp-"
_CHUNK_BYTES = 4 * 1024 * 1024

# What a DCP ``.metadata`` pickle may reference: DCP's own metadata records, torch sizes and dtypes, and
# the path type DCP records the checkpoint id with. Anything else is refused before it is created.
_METADATA_GLOBALS = frozenset(
    {
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    }
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
    }
)


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a sharded checkpoint directory (it holds DCP metadata)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, DCP_METADATA_FILE))


# ------------------------------------------------------------------------------------------ writing
def check_directory_target(path: str | os.PathLike[str]) -> None:
    """Refuse a target that exists and is not a directory, before anything is written.

    Renaming a directory over a file, a device or a pipe would replace it; nothing the user has at
    that path may be lost by a save.
    """
    target = os.fspath(path)
    if os.path.lexists(target) and not os.path.isdir(target):
        kind = (
            "a file"
            if os.path.isfile(target)
            else "something that is not a directory (a device, pipe or socket)"
        )
        raise CheckpointError(
            f"Cannot write a sharded checkpoint to '{target}': {kind} is there. Choose another path, or "
            f"remove it first if it is not needed."
        )


def create_temporary_directory(path: str | os.PathLike[str]) -> str:
    """Create and return the sibling directory that ``path``'s next version is written into (one process).

    Its name, ``.NAME.tmp-HOST-PID-TOKEN``, says who writes it, so that a later save can tell a
    directory left by a killed process from one a live process is still writing.
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    make_directory(parent, os.fspath(path))
    reclaim.wait()  # the version replaced last time is gone before this one takes space
    if os.path.isdir(path) and not os.path.islink(path):
        reclaim.drop_cached_pages_of_tree(os.fspath(path))  # see reclaim.drop_cached_pages
    remove_stale_temporary_directories(path)
    while True:
        tmp = os.path.join(parent, f"{_temp_prefix(name)}{_host_tag()}-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue


def remove_stale_temporary_directories(path: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary directories of ``path`` that a killed save left behind; return their paths.

    Only directories of this target, written from this host by a process that no longer exists, are
    removed: another node, or a live process here, may be writing one right now.
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(re.escape(_temp_prefix(name)) + r"(?P<host>.+)-(?P<pid>[0-9]+)-[0-9a-f]{16}")
    host = _host_tag()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            match = pattern.fullmatch(entry.name)
            if match is None or match["host"] != host or not entry.is_dir(follow_symlinks=False):
                continue
            pid = int(match["pid"])
            if pid != os.getpid() and not _process_exists(pid):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    if removed:
        rank_zero_info(
            f"Removed {len(removed)} unfinished checkpoint director{'y' if len(removed) == 1 else 'ies'} of "
            f"'{os.fspath(path)}' left by a save that was killed: {', '.join(removed)}"
        )
    return removed


def _temp_prefix(name: str) -> str:
    return f".{name[:120]}{_TMP_TAG}"


def save_shards(shards: dict[str, Any], directory: str, process_group: Any = None) -> Records:
    """Write the (sharded) tensors of ``shards`` into ``directory`` with DCP; every process calls this.

    Returns the size and CRC-32 of each file this process wrote, taken while writing
    (:mod:`fabric.checkpoint.checksummed`): the manifest needs no second pass over the files. DCP's own
    collectives (planning, the gather of write results) run on ``process_group`` (default: the default
    group); a background save passes its own.
    """
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    import torch.distributed.checkpoint as dcp

    recorder = Recorder(directory)
    dcp.save(
        shards,
        storage_writer=dcp_writer(directory, recorder),
        process_group=process_group,
        no_dist=not dist.is_initialized(),
    )
    return recorder.records


def files_to_record(directory: str) -> list[str]:
    """The files of a finished directory that its manifest covers, as sorted relative paths (all but the manifest)."""
    names = []
    for root, _, files in os.walk(directory):
        for file in files:
            name = os.path.relpath(os.path.join(root, file), directory).replace(os.sep, "/")
            if name != MANIFEST_FILE:
                names.append(name)
    return sorted(names)


def checksum(path: str) -> dict[str, int]:
    """Size and CRC-32 of one file, read in chunks (memory stays small whatever the file's size).

    One buffer is read into again and again: a fresh 4 MiB ``bytes`` per chunk is an ``mmap`` and a
    thousand page faults each time.
    """
    crc, size = 0, 0
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            crc = zlib.crc32(view[:count], crc)
            size += count
    return {"size": size, "crc32": crc}


def write_manifest(directory: str, checksums: dict[str, dict[str, int]], sync_files: bool = True) -> None:
    """Write the manifest last: a directory with a manifest is complete, and every byte of it is known.

    ``sync_files=False`` when the writers fsynced every file themselves (DCP's shards and ``.metadata``,
    :func:`~fabric.checkpoint.checksummed.save_checksummed`): a second fsync per file is then only a
    system call. The directory itself is synced by :func:`commit_directory`.
    """
    body = json.dumps(
        {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION, "files": checksums},
        indent=1,
        sort_keys=True,
    ).encode()
    path = os.path.join(directory, MANIFEST_FILE)
    with open(path, "wb") as file:
        file.write(body)
        file.flush()
        os.fsync(file.fileno())
    for name in checksums if sync_files else ():
        # Files an engine wrote without fsync (DeepSpeed's): this makes sure of every file.
        with contextlib.suppress(OSError):
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def commit_directory(tmp: str, path: str | os.PathLike[str]) -> None:
    """Put the complete directory ``tmp`` in place of ``path`` (called on one process).

    The old directory is first renamed aside, then ``tmp`` renamed to ``path``, then the old one is
    deleted in a background thread. A crash between the two renames leaves both complete directories on disk, and
    :func:`resolve_checkpoint_path` finds the old one; at no point is there no loadable checkpoint.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    fsync_directory(tmp)
    old = None
    if os.path.lexists(path):
        try:
            check_directory_target(path)
        except CheckpointError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = os.path.join(parent, f".{name}{_OLD_TAG}{secrets.token_hex(16)}")
        os.rename(path, old)
    os.rename(tmp, path)
    fsync_directory(parent)
    # The replaced version and any left by a killed process have hidden names by now: deleting them is
    # off the caller's time (see fabric.checkpoint.reclaim).
    for stale in _old_versions(path):
        reclaim.remove_tree(stale)


def _old_versions(path: str) -> list[str]:
    parent, name = os.path.split(path)
    prefix = f".{name}{_OLD_TAG}"
    with contextlib.suppress(OSError):
        return [
            e.path
            for e in os.scandir(parent)
            if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)
        ]
    return []


def resolve_checkpoint_path(
    path: str | os.PathLike[str], accept: Callable[[str], bool] = is_sharded_checkpoint
) -> str:
    """``path``, or the previous version left aside by a save that crashed between its two renames.

    ``accept`` says which directories count as a checkpoint (DCP's by default; DeepSpeed's for its
    strategy). The version found is read through the same checks as any other (safe metadata,
    manifest), so a crafted directory placed there gains nothing.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        return path
    olds = sorted((p for p in _old_versions(path) if accept(p)), key=os.path.getmtime)
    if olds:
        return olds[-1]
    raise FileNotFoundError(f"No checkpoint at '{path}'. Check the path, or save a checkpoint there first.")


# ------------------------------------------------------------------------------------------ reading
def read_manifest(directory: str) -> dict[str, dict[str, int]] | None:
    """The manifest's file table, or ``None`` for a directory written without one (older or plain DCP)."""
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as file:
            manifest = json.loads(file.read())
        files = manifest["files"]
        if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not a fabric manifest")
        for name, record in files.items():
            _check_relative_name(directory, name)
            if not (isinstance(record.get("size"), int) and isinstance(record.get("crc32"), int)):
                raise ValueError(f"bad record for {name!r}")
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"The manifest '{path}' of the sharded checkpoint is corrupted ({type(error).__name__}: {error}). "
            f"The checkpoint cannot be verified; restore it from a backup or re-create it."
        ) from error
    return files


def verify_files(directory: str, manifest: dict[str, dict[str, int]], names: Iterable[str]) -> list[str]:
    """Compare the named files with the manifest; return one message per file that does not match."""
    problems = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            actual = checksum(path)
        except OSError as error:
            problems.append(f"'{path}' cannot be read ({error.strerror or error})")
            continue
        expected = manifest[name]
        if actual["size"] != expected["size"]:
            problems.append(
                f"'{path}' has {actual['size']} bytes, {expected['size']} were written (truncated?)"
            )
        elif actual["crc32"] != expected["crc32"]:
            problems.append(f"'{path}' does not match its checksum (corrupted)")
    return problems


def integrity_error(directory: str, problems: Sequence[str]) -> CheckpointError:
    return CheckpointError(
        f"The sharded checkpoint '{directory}' is corrupted: {'; '.join(problems)}. It cannot be loaded; restore "
        f"it from a backup or re-create it."
    )


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata and nothing else: any other global in the pickle is refused, not created."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of checkpoint metadata")


def read_metadata(directory: str, weights_only: bool = True) -> Any:
    """Read and check a directory's DCP metadata, without running anything it contains.

    Raises :class:`CheckpointError` when the metadata references anything beyond DCP's metadata classes
    (with ``weights_only=True``), is not DCP metadata, or names a file outside the directory.
    """
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    path = os.path.join(directory, DCP_METADATA_FILE)
    try:
        with open(path, "rb") as file:
            data = file.read()
        unpickler = _MetadataUnpickler if weights_only else pickle.Unpickler
        metadata = unpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"The checkpoint metadata '{path}' references Python objects that are not checkpoint metadata ({error}); "
            f"loading it could run code, so it was refused. If, and only if, you trust the source of this "
            f"checkpoint, load it with `weights_only=False`."
        ) from error
    except Exception as error:
        raise CheckpointError(
            f"The checkpoint metadata '{path}' is corrupted or truncated ({type(error).__name__}: {error}). "
            f"Restore the checkpoint from a backup or re-create it."
        ) from error
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"'{path}' is not the metadata of a torch.distributed.checkpoint directory.")
    for info in metadata.storage_data.values():
        if (
            not isinstance(info, _StorageInfo)
            or not isinstance(info.offset, int)
            or not isinstance(info.length, int)
        ):
            raise CheckpointError(
                f"The checkpoint metadata '{path}' has a malformed storage record: {info!r}."
            )
        _check_relative_name(directory, info.relative_path)
    return metadata


def referenced_files(metadata: Any) -> set[str]:
    """The files (relative names) that the metadata reads tensors and values from."""
    return {info.relative_path for info in metadata.storage_data.values()}


def _check_relative_name(directory: str, name: Any) -> None:
    """A file a checkpoint refers to must be a plain name resolving inside its directory (no ``..``, no links out)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(
            f"The checkpoint '{directory}' refers to an invalid file name {name!r}; it was refused."
        )
    root = os.path.realpath(directory)
    resolved = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, resolved]) != root or resolved == root:
        raise CheckpointError(
            f"The checkpoint '{directory}' refers to the file {name!r}, which lies outside its directory; a "
            f"checkpoint may only read its own files. It was refused: the directory was crafted or damaged."
        )


def saved_keys(metadata: Any) -> set[str]:
    """The top-level entries stored in the DCP part of a directory (keys may contain dots)."""
    planner_data = metadata.planner_data or {}
    keys = set()
    for fqn in metadata.state_dict_metadata:
        path = planner_data.get(fqn)
        keys.add(str(path[0]) if path else fqn.split(".", 1)[0])
    return keys


def saved_param_groups(metadata: Any, key: str) -> dict[str, Any]:
    """The hyper-parameter names of the optimizer saved under ``key``, as ``{"param_groups": [...]}``.

    Read from the metadata alone (DCP flattens ``param_groups`` to ``KEY.param_groups.INDEX.NAME``), so the
    kind of optimizer can be checked before anything is read.
    """
    prefix = f"{key}.param_groups."
    groups: dict[str, dict[str, None]] = {}
    for fqn in metadata.state_dict_metadata:
        if fqn.startswith(prefix):
            index, _, name = fqn[len(prefix) :].partition(".")
            groups.setdefault(index, {})[name] = None
    return {"param_groups": list(groups.values())}


def _reader(directory: str, metadata: Any) -> Any:
    """A DCP reader of ``directory`` that hands out the already checked ``metadata``."""
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _CheckedReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _CheckedReader(directory)


def _planner(weights_only: bool, strict: bool, keys: set[str] | None = None) -> Any:
    """DCP's load planner, with its non-tensor entries unpickled by ``torch.load(weights_only=...)``.

    With ``keys``, the planner builds the state from the metadata (for entries nobody asked to load
    into) instead of filling a given one.
    """
    from torch.distributed.checkpoint._nested_dict import set_element  # type: ignore[attr-defined]
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner

    base: type = DefaultLoadPlanner if keys is None else _EmptyStateDictLoadPlanner

    class _Planner(base):  # type: ignore[valid-type,misc]
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=weights_only)
            except Exception as error:
                raise CheckpointError(
                    f"The checkpoint entry '{fqn}' holds Python objects that `weights_only=True` refuses to load, "
                    f"because unpickling them could run code ({error}). If, and only if, you trust the source of "
                    f"this checkpoint, load it with `weights_only=False`."
                ) from error
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    if keys is None:
        return _Planner(allow_partial_load=not strict)
    return _Planner(keys=keys)


def load_shards(
    targets: dict[str, Any],
    directory: str,
    metadata: Any,
    distributed: bool,
    strict: bool,
    weights_only: bool,
) -> None:
    """Fill the tensors of ``targets`` in place from ``directory`` (any layout: DCP reshards).

    With ``distributed=False`` this process reads whole tensors by itself (one process, or DDP where
    every process holds the full model).
    """
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    import torch.distributed.checkpoint as dcp

    with _dcp_errors(directory):
        dcp.load(
            targets,
            storage_reader=_reader(directory, metadata),
            planner=_planner(weights_only, strict),
            no_dist=not distributed,
        )


@contextlib.contextmanager
def _dcp_errors(directory: str) -> Iterator[None]:
    """Turn what DCP raises into one CheckpointError with the first rank's cause.

    DCP raises RuntimeError, KeyError, ... and, across processes, CheckpointException: a BaseException
    whose text is every rank's traceback.
    """
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except (Exception, CheckpointException) as err:
        failures = err.failures if isinstance(err, CheckpointException) else {}
        cause = next(iter(failures.values()))[0] if failures else err
        if isinstance(cause, CheckpointError):
            raise cause from err
        raise CheckpointError(
            f"Could not load the sharded checkpoint '{directory}': {cause}. Check that it holds the requested "
            f"entries and that the model has the same parameters (pass strict=False to skip missing ones)."
        ) from err


def read_entries(directory: str, metadata: Any, keys: set[str], weights_only: bool) -> dict[str, Any]:
    """The DCP entries ``keys`` of a directory as full tensors and values, read by this process alone."""
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    if not keys:
        return {}
    state: dict[str, Any] = {}
    with _dcp_errors(directory):
        _load_state_dict(
            state,
            storage_reader=_reader(directory, metadata),
            planner=_planner(weights_only, strict=True, keys=keys),
            no_dist=True,
        )
    return {key: value for key, value in state.items() if key in keys}
