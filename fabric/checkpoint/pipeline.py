"""The one checkpoint pipeline: what ``Fabric.save`` writes and what ``Fabric.load`` restores, for every layout.

A strategy supplies only what differs per engine (how to get and set a module's and an optimizer's
state, whether its processes hold shards, which layout it writes, its collectives); this module does
the rest, the same way for all of them:

* **What is written.** Models and optimizers become state dicts, objects with ``state_dict`` are asked
  for theirs, plain values are stored as given, ``filter`` keeps the entries it accepts. When the state
  holds something Fabric set up (a model, an optimizer or a dataloader), the resume state goes in too:
  every process's random state, every set-up dataloader's position, the precision's state (gradient
  scaler). A dict of plain values is written exactly as given, so ``torch.load`` returns it unchanged.
* **Layouts.** Picked by the strategy's ``checkpoint_layout`` (:mod:`fabric.checkpoint.layouts`): one
  file (written by global rank 0 through the ``CheckpointIO`` plugin: atomic and checksummed by
  default), a sharded directory (:mod:`fabric.checkpoint.sharded`: every process writes its shards, a
  manifest with every file's checksum is written last, the directory is swapped in only when
  complete), or DeepSpeed's directory (:mod:`fabric.checkpoint.deepspeed_layout`: written by the
  engine, then checksummed and swapped in the same way). Every layout loads into every strategy.
* **Options.** What ``Fabric.save``/``load`` were asked for travels as one object
  (:mod:`fabric.checkpoint.options`) to the layout that reads it.
* **What is read.** Nothing that can run code unless ``weights_only=False``; every byte checked against
  its checksum; then each object in ``state`` restored in place, the resume state given back, and what
  the checkpoint holds beyond ``state`` returned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

import torch.distributed as dist
from torch.nn import Module
from torch.optim import Optimizer

from fabric import lifecycle
from fabric.checkpoint import sharded, states
from fabric.checkpoint.background import AsyncSave, GroupCollectives, SingleProcess, Staging, finish_at_exit
from fabric.checkpoint.checkpoint_io import is_remote
from fabric.checkpoint.checksummed import Recorder, Records, save_checksummed
from fabric.checkpoint.deepspeed_format import consolidate_deepspeed, is_deepspeed_checkpoint
from fabric.checkpoint.deepspeed_layout import DeepSpeedLayout
from fabric.checkpoint.directory import check_manifest_covers, read_meta
from fabric.checkpoint.host import CheckpointHost, Collectives
from fabric.checkpoint.io import (
    CheckpointError,
    NotACheckpointError,
    NotAFileError,
    _os_error_behind,
    atomic_save,
    safe_load,
)
from fabric.checkpoint.keys import DEEPSPEED_KEY, PER_RANK_STATE_KEY, PRECISION_STATE_KEY, RESERVED_KEYS
from fabric.checkpoint.layouts import FileLayout, Layout, ShardedLayout
from fabric.checkpoint.options import (
    DEFAULT_LOAD,
    DEFAULT_SAVE,
    LoadOptions,
    SaveOptions,
    check_filter,
    check_state,
    owner,
    owner_in,
)
from fabric.utilities.rank_zero import rank_zero_warn
from fabric.utilities.types import Stateful


class Checkpointer:
    """Saves and loads checkpoints for one strategy (its ``host``)."""

    def __init__(self, host: CheckpointHost) -> None:
        # The strategy owns the checkpointer; a weak link keeps the two from holding each other alive.
        self._host_ref = weakref.ref(host)
        # Asynchronous saves (fabric.checkpoint.background): the one in flight on this process, whether
        # one was started since the processes last agreed on the outcome (the same on every process,
        # since saves are collective), and the process group their writes talk on.
        self._pending: AsyncSave | None = None
        self._unsettled = False
        self._background_collectives: GroupCollectives | SingleProcess | None = None
        self._exit_step_registered = False
        #: the CPU copies of the last asynchronous sharded save, reused by the next (see ``Staging``)
        self.staging = Staging()

    @property
    def host(self) -> CheckpointHost:
        host = self._host_ref()
        assert host is not None
        return host

    # -------------------------------------------------------------------------------------- save
    def save(
        self, path: str | os.PathLike[str], state: Mapping[str, Any], options: SaveOptions = DEFAULT_SAVE
    ) -> AsyncSave | None:
        """Write ``state`` to ``path`` in the strategy's layout; every process calls this.

        With ``options.async_save`` it returns once the state is copied to CPU memory, and the write goes
        on in a background thread (:mod:`fabric.checkpoint.background`); the returned handle follows it.
        A save still in flight is waited for first, and its error raised here.
        """
        self.wait_for_pending()
        check_state(state, "save")
        self.host.prepare_save(state)  # e.g. FSDP: rank 0's buffers everywhere, as DDP holds them
        options = replace(options, filter=check_filter(options.filter, state))
        return self.layout().save(self, os.fspath(path), state, options)

    def layout(self) -> Layout:
        """The layout the strategy writes (its ``checkpoint_layout``)."""
        name = self.host.checkpoint_layout
        if name == "deepspeed":
            return DeepSpeedLayout()
        return ShardedLayout() if name == "sharded" else FileLayout()

    def write_directory(
        self,
        path: str,
        write_parts: Callable[[str], Records | None],
        meta: dict[str, Any],
        collectives: Collectives | None = None,
    ) -> None:
        """Write a checkpoint directory atomically; every process calls this.

        ``write_parts(tmp)`` runs on every process and writes the engine's files (DCP shards, a
        DeepSpeed engine's partitions) into the temporary directory; ``meta`` (plain values and the
        resume state) goes into ``meta.pt``. A writer that checksummed its files on the way returns their
        records (DCP's, :mod:`fabric.checkpoint.checksummed`): one gather brings them to rank 0. One that
        returns ``None`` (a DeepSpeed engine) is followed by a pass in which every process checksums its
        share of the files. Rank 0 writes the manifest last and swaps the directory in. A failure on the way removes the temporary
        directory and leaves the previous checkpoint as it was. ``collectives`` replaces the strategy's
        collectives (a background save talks on a process group of its own).
        """
        host: Collectives = collectives if collectives is not None else self.host
        if os.path.islink(path):
            # Through a link to a checkpoint directory: the new version goes where the link points (its
            # file system, beside its target), and the user's link stays, as a single-file save does.
            path = os.path.realpath(path)
        sharded.check_directory_target(path)
        tmp = host.broadcast(sharded.create_temporary_directory(path) if host.is_global_zero else None)
        try:
            written = write_parts(tmp)
            if written is None:
                checksums = _checksum_files(host, tmp, meta)
            else:
                checksums = _gather_records(host, tmp, meta, written)
            if host.is_global_zero:
                sharded.write_manifest(tmp, checksums, sync_files=written is None)
                sharded.commit_directory(tmp, path)
        except BaseException as error:
            if host.is_global_zero and os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            os_error = _os_error_in(error)
            if os_error is None:
                raise
            raise OSError(
                os_error.errno,
                f"Could not write the checkpoint directory '{path}' ({os_error.strerror or os_error}). The "
                f"previous checkpoint at that path, if any, is unchanged. Check free disk space, the file size "
                f"limit and permissions there, or save to another directory.",
            ) from error
        host.barrier()

    def resume_state(self, state: Mapping[str, Any], per_rank_keys: Collection[str]) -> dict[str, Any]:
        """Every process's random state and dataloader positions, and the precision's state."""
        host = self.host
        mine = {
            "rng": host.capture_rng_state(),
            "dataloaders": {key: state[key].state_dict() for key in per_rank_keys},
        }
        resume: dict[str, Any] = {PER_RANK_STATE_KEY: host.gather_object(mine)}
        precision_state = host.precision.state_dict()
        if precision_state:
            resume[PRECISION_STATE_KEY] = precision_state
        return resume

    # ------------------------------------------------------------------------ background saves
    @property
    def pending(self) -> AsyncSave | None:
        """The asynchronous save this process started last, until the processes settle its outcome."""
        return self._pending

    def wait_for_pending(self) -> None:
        """Wait for the asynchronous save in flight, agree on its outcome, raise its error on every process.

        Every process calls this at the same point (a save, a load, ``fabric.wait_for_checkpoint()``):
        after an asynchronous save it costs one small all-gather of the outcome on the training group,
        which is also what makes a load on any process see a file that rank 0 has just finished.
        Otherwise it does nothing.
        """
        if not self._unsettled:
            return
        pending, self._pending, self._unsettled = self._pending, None, False
        error = pending.deliver() if pending is not None else None
        host = self.host
        outcomes = [None if error is None else _describe_error(error)]
        try:
            if host.world_size > 1:
                outcomes = host.gather_object(outcomes[0])
        except BaseException:
            if error is not None:
                # The write's own failure first (its cause, e.g. the OSError, stays attached).
                raise error  # noqa: B904
            raise
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(outcomes) if message is not None]
        if failed:
            where = "; ".join(f"rank {rank}: {message}" for rank, message in failed)
            path = pending.path if pending is not None else "the checkpoint"
            raise CheckpointError(
                f"The background save of '{path}' failed on another process ({where}). The previous checkpoint "
                f"at that path, if any, is unchanged. Fix the cause and save again."
            )

    def finish_here(self) -> None:
        """Wait for this process's save in flight and raise its error, without talking to the others (teardown)."""
        pending, self._pending, self._unsettled = self._pending, None, False
        error = pending.deliver() if pending is not None else None
        self.staging.release()
        if error is not None:
            raise error

    def collectives_for_background(self) -> GroupCollectives | SingleProcess:
        """The process group background writes talk on: created once, by every process, on this thread."""
        if self._background_collectives is None:
            if dist.is_available() and dist.is_initialized():
                self._background_collectives = GroupCollectives.create()
            else:
                self._background_collectives = SingleProcess()
        return self._background_collectives

    def start_background(self, path: str, write: Callable[[], None] | None) -> AsyncSave:
        """Start ``write`` in a background thread (``None``: this process writes nothing); return its handle."""
        if not self._exit_step_registered:
            # Before the process group is left: a sharded write still needs its group.
            lifecycle.on_exit(finish_at_exit(lambda: self._pending), order=lifecycle.FINISH_CHECKPOINTS)
            self._exit_step_registered = True
        handle = AsyncSave.nothing_to_write(path) if write is None else AsyncSave(path)
        self._pending, self._unsettled = handle, True
        if write is not None:
            handle.start(write)
        return handle

    # -------------------------------------------------------------------------------------- load
    def load(
        self,
        path: str | os.PathLike[str],
        state: dict[str, Any] | Module | Optimizer | None = None,
        options: LoadOptions = DEFAULT_LOAD,
    ) -> Any:
        """Restore ``state`` in place from ``path``; return what the checkpoint holds beyond it.

        Without ``state`` the whole checkpoint is returned and nothing is restored. A module or an
        optimizer as ``state`` reads the file as its plain state dict (:meth:`load_raw`), as Lightning
        does, and returns ``{}``.
        """
        if isinstance(state, (Module, Optimizer)):
            # Lightning's `fabric.load(path, model)`: the file is that object's plain state dict.
            optimizer_owner = options.owners.get(state) if isinstance(state, Optimizer) else None
            self.load_raw(
                path, state, strict=options.strict, weights_only=options.weights_only, owner=optimizer_owner
            )
            return {}
        if state is not None:
            check_state(state, "load")
        self.wait_for_pending()
        return self.layout().load(self, os.fspath(path), state, options)

    def read(self, path: str, state: dict[str, Any] | None, options: LoadOptions) -> Any:
        """Read a checkpoint of any layout (a file, a sharded directory, a DeepSpeed directory without
        its engine) and restore ``state`` from it; without ``state`` return it whole."""
        weights_only = options.weights_only
        restored: set[str] = set()
        if not is_remote(path) and not os.path.exists(path):
            # A directory a crashed save left aside; else the CheckpointIO plugin says what is there.
            with contextlib.suppress(FileNotFoundError):
                path = sharded.resolve_checkpoint_path(path)
        if not is_remote(path) and os.path.isdir(path) and is_deepspeed_checkpoint(path):
            # Written by DeepSpeedStrategy, read here without an engine: merged into one file first.
            checkpoint = _read_deepspeed_directory(path, weights_only)
        elif not is_remote(path) and os.path.isdir(path):
            if not sharded.is_sharded_checkpoint(path):
                raise NotACheckpointError(
                    f"The path '{path}' does not point to a valid checkpoint: it is a directory but not a sharded"
                    f" checkpoint (it has no {sharded.DCP_METADATA_FILE}). Pass the path of a checkpoint file or"
                    " directory written by `fabric.save`."
                )
            checkpoint, restored = self._load_directory(path, state, options)
        else:
            checkpoint = self.host.checkpoint_io.load_checkpoint(
                path, map_location="cpu", weights_only=weights_only
            )
        if state is None:
            if isinstance(checkpoint, dict):
                for key in RESERVED_KEYS:
                    checkpoint.pop(key, None)
            return checkpoint
        return self.restore(path, checkpoint, state, restored, options)

    def restore(
        self,
        path: str,
        checkpoint: Any,
        state: dict[str, Any],
        restored: Collection[str] = (),
        options: LoadOptions = DEFAULT_LOAD,
    ) -> dict[str, Any]:
        """Restore the entries of ``state`` from a read ``checkpoint`` (except ``restored``, already done).

        Models and optimizers through the strategy's hooks, objects with ``load_state_dict`` in place,
        plain values replaced in ``state``; then the precision's and this process's resume state.
        Returns what ``checkpoint`` holds beyond ``state``.
        """
        strict, owners = options.strict, options.owners
        if not isinstance(checkpoint, dict):
            raise TypeError(
                f"The checkpoint '{path}' holds a {type(checkpoint).__name__}, not a dict of states. To read a plain "
                f"`torch.save` file of one module or optimizer, use `Fabric.load_raw`."
            )
        precision_state = checkpoint.pop(PRECISION_STATE_KEY, None)
        per_rank = checkpoint.pop(PER_RANK_STATE_KEY, None)
        missing = [key for key in state if key not in checkpoint and key not in restored]
        if strict and missing:
            raise KeyError(
                f"The checkpoint '{path}' has no entry for {missing} requested in `state` (it holds "
                f"{sorted(set(checkpoint) | set(restored))}). Remove those keys from `state`, or pass strict=False to "
                f"skip them."
            )
        for key, obj in state.items():  # every check before the first change
            if isinstance(obj, Optimizer) and key not in restored and key in checkpoint:
                states.check_optimizer_kind(obj, checkpoint[key], path, key)
        for key, obj in state.items():
            if key in restored or key not in checkpoint:
                continue
            value = checkpoint.pop(key)
            if isinstance(obj, Module):
                self.host.load_module_state_dict(obj, value, strict=strict)
            elif isinstance(obj, Optimizer):
                self.host.load_optimizer_state_dict(obj, value, owners.get(obj) or owner_in(obj, state))
            elif isinstance(obj, Stateful):
                obj.load_state_dict(value)
            else:
                state[key] = value
        if precision_state is not None:
            self.host.precision.load_state_dict(precision_state)
        if per_rank is not None:
            self._restore_per_rank(path, per_rank, state, options.restore_rng)
        return checkpoint

    def _load_directory(
        self, path: str, state: dict[str, Any] | None, options: LoadOptions
    ) -> tuple[dict[str, Any], set[str]]:
        """Verify a directory, load its shards into the modules and optimizers of ``state``, return the rest."""
        strict, weights_only = options.strict, options.weights_only
        metadata = self._verified_metadata(path, weights_only)
        meta = read_meta(path, weights_only)
        stored = sharded.saved_keys(metadata)
        targets: dict[str, Any] = {}
        modules: dict[str, Module] = {}
        for key, obj in (state or {}).items():
            if key not in stored:
                continue
            if isinstance(obj, Module):
                targets[key] = states.module_state(obj)
            elif isinstance(obj, Optimizer):
                states.check_optimizer_kind(obj, sharded.saved_param_groups(metadata, key), path, key)
                modules[key] = owner(obj, options.owners, state)
                targets[key] = states.optimizer_state(modules[key], obj)
        if targets:
            sharded.load_shards(
                targets,
                path,
                metadata,
                self.host.sharded_checkpoints,
                strict=strict,
                weights_only=weights_only,
            )
        for key, value in targets.items():
            obj = (state or {})[key]
            if isinstance(obj, Module):
                states.set_module_state(obj, value, strict=strict, full=False)
            else:
                states.set_optimizer_state(modules[key], obj, value, full=False)
        # What nobody asked to load into comes back whole, as from a single file.
        rest = sharded.read_entries(path, metadata, stored - set(targets), weights_only)
        return {**meta, **rest}, set(targets)

    def _verified_metadata(self, path: str, weights_only: bool) -> Any:
        """Check every file against the manifest, then read the DCP metadata without running code."""
        manifest = self.verify_directory(path)
        metadata = sharded.read_metadata(path, weights_only)
        if manifest is not None:
            check_manifest_covers(path, manifest, metadata)
        return metadata

    def verify_directory(self, path: str) -> dict[str, dict[str, int]] | None:
        """Compare every file of a checkpoint directory with its manifest; the processes share the reading.

        Returns the manifest, or ``None`` (with a warning) for a directory written without one.
        """
        host = self.host
        manifest = sharded.read_manifest(path)
        if manifest is None:
            rank_zero_warn(
                f"The checkpoint directory '{path}' has no {sharded.MANIFEST_FILE} (it was written by an older "
                f"version or by another tool): its files cannot be verified."
            )
            return None
        names = sorted(manifest)
        parts = host.gather_object(sharded.verify_files(path, manifest, _my_share(names, host)))
        problems = [problem for part in parts for problem in part]
        if problems:
            raise sharded.integrity_error(path, problems)
        return manifest

    def _restore_per_rank(
        self, path: str, per_rank: list[dict[str, Any]], state: dict[str, Any], restore_rng: bool
    ) -> None:
        """Give this process its own random state and dataloader positions back."""
        host = self.host
        if len(per_rank) != host.world_size:
            rank_zero_warn(
                f"The checkpoint '{path}' was written by {len(per_rank)} process(es) and is loaded by "
                f"{host.world_size}: the random state is not restored and dataloaders continue from rank 0's "
                f"position, so the resumed run will not repeat the original exactly."
            )
            return
        mine = per_rank[host.global_rank]
        for key, loader_state in mine["dataloaders"].items():
            if key in state and isinstance(state[key], Stateful):
                state[key].load_state_dict(loader_state)
        if restore_rng:
            host.restore_rng_state(mine["rng"])

    # ---------------------------------------------------------------------------------- load_raw
    def load_raw(
        self,
        path: str | os.PathLike[str],
        obj: Module | Optimizer,
        strict: bool = True,
        weights_only: bool = True,
        owner: Module | None = None,
    ) -> None:
        """Load a plain ``torch.save`` file of a state dict into one module or optimizer."""
        self.wait_for_pending()
        path = os.fspath(path)
        if not is_remote(path) and os.path.isdir(path):
            raise NotAFileError(
                21,
                f"Fabric.load_raw('{path}'): it is a directory. The given path must be a single file containing "
                f"the full state dict of one module or optimizer. Load a sharded checkpoint with `fabric.load(path, state)`, or turn it "
                f"into one file with `fabric consolidate`.",
            )
        loaded = self.host.checkpoint_io.load_checkpoint(path, map_location="cpu", weights_only=weights_only)
        if isinstance(obj, Module):
            if isinstance(loaded, Module):  # a pickled module, read with weights_only=False
                loaded = loaded.state_dict()
            self.host.load_module_state_dict(obj, loaded, strict=strict)
        elif isinstance(obj, Optimizer):
            self.host.load_optimizer_state_dict(obj, loaded, owner)
        else:
            raise TypeError(
                f"Fabric.load_raw(path, obj): `obj` must be a module or an optimizer, got {type(obj).__name__}. "
                f"For other objects use `Fabric.load`."
            )


def _read_deepspeed_directory(path: str, weights_only: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "consolidated.pt")
        consolidate_deepspeed(path, target, weights_only=weights_only)
        checkpoint = safe_load(target, weights_only=weights_only)
    checkpoint.pop(DEEPSPEED_KEY, None)
    return checkpoint


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError (disk full, file too large) behind a failed save, also inside DCP's per-rank failures."""
    from torch.distributed.checkpoint.api import CheckpointException  # heavy: torch.distributed.checkpoint

    if isinstance(error, CheckpointException):
        for failure in error.failures.values():
            found = _os_error_behind(failure[0] if isinstance(failure, tuple) else failure)
            if found is not None:
                return found
        return None
    return _os_error_behind(error)


def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _checksum_files(host: Collectives, tmp: str, meta: dict[str, Any]) -> Records:
    """``meta.pt`` written, then every file read back and checksummed, each process a share of them."""
    if host.is_global_zero:
        atomic_save(meta, os.path.join(tmp, sharded.META_FILE))
    host.barrier()
    names = host.broadcast(sharded.files_to_record(tmp) if host.is_global_zero else None)
    mine = {name: sharded.checksum(os.path.join(tmp, name)) for name in _my_share(names, host)}
    return {name: record for part in host.gather_object(mine) for name, record in part.items()}


def _gather_records(host: Collectives, tmp: str, meta: dict[str, Any], written: Records) -> Records:
    """Every process's records of the files it wrote, on rank 0 (``{}`` elsewhere), ``meta.pt``'s included.

    The gather is also the point where every process has finished writing. A file no stream could vouch
    for (see :class:`~fabric.checkpoint.checksummed.ChecksumStream`) is read back here, on rank 0.
    """
    if host.is_global_zero:
        recorder = Recorder(tmp)
        save_checksummed(meta, os.path.join(tmp, sharded.META_FILE), recorder)
        written = {**written, **recorder.records}
    parts = host.gather_object(written)
    if not host.is_global_zero:
        return {}
    records = {name: record for part in parts for name, record in part.items()}
    return {
        name: records.get(name) or sharded.checksum(os.path.join(tmp, name))
        for name in sharded.files_to_record(tmp)
    }


def _my_share(names: list[str], host: Collectives) -> list[str]:
    return names[host.global_rank :: host.world_size]


__all__ = ["PER_RANK_STATE_KEY", "PRECISION_STATE_KEY", "CheckpointHost", "Checkpointer", "Collectives"]
