"""The one checkpoint pipeline: what ``Fabric.save`` writes and what ``Fabric.load`` restores, for every layout.

A strategy supplies only what differs per engine (how to get and set a module's and an optimizer's
state, whether its processes hold shards, which layout it writes, its collectives); this module does
the rest, the same way for all of them:

* **What is written.** Models and optimizers become state dicts, objects with ``state_dict`` are asked
  for theirs, plain values are stored as given, ``filter`` keeps the entries it accepts. When the state
  holds something Fabric set up (a model, an optimizer or a dataloader), the resume state goes in too:
  every process's random state, every set-up dataloader's position, the precision's state (gradient
  scaler). A dict of plain values is written exactly as given, so ``torch.load`` returns it unchanged.
* **Layouts.** One file (written by global rank 0 through the ``CheckpointIO`` plugin: atomic and
  checksummed by default), or a sharded directory (:mod:`fabric.checkpoint.sharded`: every process
  writes its shards, a manifest with every file's checksum is written last, the directory is swapped
  in only when complete). Every layout loads into every strategy.
* **What is read.** Nothing that can run code unless ``weights_only=False``; every byte checked against
  its checksum; then each object in ``state`` restored in place, the resume state given back, and what
  the checkpoint holds beyond ``state`` returned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from torch.nn import Module
from torch.optim import Optimizer

from fabric.checkpoint import sharded, states
from fabric.checkpoint.checkpoint_io import CheckpointIO, is_remote
from fabric.checkpoint.deepspeed_format import DEEPSPEED_KEY, is_deepspeed_checkpoint
from fabric.checkpoint.io import (
    CheckpointError,
    NotACheckpointError,
    NotAFileError,
    _os_error_behind,
    atomic_save,
    safe_load,
)
from fabric.utilities.rank_zero import rank_zero_warn
from fabric.utilities.types import Stateful

if TYPE_CHECKING:
    from fabric.checkpoint.background import AsyncSave, GroupCollectives, SingleProcess

#: key under which the precision plugin's state (e.g. the gradient scaler) is stored in checkpoints
PRECISION_STATE_KEY = "__fabric_precision__"
#: key under which each process's own state (random generators, dataloader positions) is stored
PER_RANK_STATE_KEY = "__fabric_per_rank__"
RESERVED_KEYS = frozenset({PRECISION_STATE_KEY, PER_RANK_STATE_KEY, DEEPSPEED_KEY})

Filter = Mapping[str, Callable[[str, Any], bool]]
Owners = Mapping[Optimizer, Module]


class Collectives(Protocol):
    """The collectives a directory write needs: the strategy's, or a background save's own group's."""

    @property
    def global_rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_global_zero(self) -> bool: ...

    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any: ...

    def gather_object(self, obj: Any) -> list[Any]: ...


class CheckpointHost(Collectives, Protocol):
    """What the pipeline asks of a strategy: its collectives, and the rest below."""

    @property
    def precision(self) -> Any: ...

    @property
    def checkpoint_io(self) -> CheckpointIO: ...

    @property
    def checkpoint_layout(self) -> Literal["file", "sharded"]: ...

    #: whether each process holds a shard of the model (and reads only its shard of a directory)
    sharded_checkpoints: bool

    def save_shards(self, shards: dict[str, Any], directory: str) -> None: ...

    def prepare_save(self, state: Mapping[str, Any]) -> None: ...

    def capture_rng_state(self) -> dict[str, Any]: ...

    def restore_rng_state(self, rng_state: dict[str, Any]) -> None: ...

    def get_module_state_dict(self, module: Module) -> dict[str, Any]: ...

    def get_optimizer_state(self, optimizer: Optimizer, module: Module | None = None) -> dict[str, Any]: ...

    def load_module_state_dict(
        self, module: Module, state_dict: dict[str, Any], strict: bool = True
    ) -> None: ...

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: dict[str, Any], module: Module | None = None
    ) -> None: ...


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

    @property
    def host(self) -> CheckpointHost:
        host = self._host_ref()
        assert host is not None
        return host

    # -------------------------------------------------------------------------------------- save
    def save(
        self,
        path: str | os.PathLike[str],
        state: Mapping[str, Any],
        filter: Filter | None = None,
        owners: Owners | None = None,
        per_rank_keys: Collection[str] = (),
        async_save: bool = False,
    ) -> AsyncSave | None:
        """Write ``state`` to ``path`` in the strategy's layout; every process calls this.

        With ``async_save=True`` it returns once the state is copied to CPU memory, and the write goes on
        in a background thread (:mod:`fabric.checkpoint.background`); the returned handle follows it.
        A save still in flight is waited for first, and its error raised here.
        """
        self.wait_for_pending()
        _check_state(state, "save")
        self.host.prepare_save(state)  # e.g. FSDP: rank 0's buffers everywhere, as DDP holds them
        filter = _check_filter(filter, state)
        owners = owners or {}
        path = os.fspath(path)
        with_resume = bool(per_rank_keys) or any(isinstance(v, (Module, Optimizer)) for v in state.values())
        if self.host.checkpoint_layout == "sharded":
            if is_remote(path):
                raise CheckpointError(
                    f"Sharded checkpoints are written to a local or mounted file system; '{path}' is remote. Save "
                    f"to a local directory (and copy it), or use a full state dict (e.g. "
                    f"FSDPStrategy(state_dict_type='full'))."
                )
            return self._save_directory(path, state, filter, owners, per_rank_keys, with_resume, async_save)
        return self._save_file(path, state, filter, owners, per_rank_keys, with_resume, async_save)

    def _save_file(
        self,
        path: str,
        state: Mapping[str, Any],
        filter: Filter,
        owners: Owners,
        per_rank_keys: Collection[str],
        with_resume: bool,
        async_save: bool = False,
    ) -> AsyncSave | None:
        host = self.host
        checkpoint: dict[str, Any] = {}
        for key, obj in state.items():
            if isinstance(obj, Module):
                value = host.get_module_state_dict(obj)
            elif isinstance(obj, Optimizer):
                value = host.get_optimizer_state(obj, owners.get(obj))
            else:
                value = _plain(obj)
            _apply_filter(checkpoint, key, value, filter)
        if with_resume:
            checkpoint.update(self.resume_state(state, per_rank_keys))
        elif isinstance(state, OrderedDict):
            checkpoint = OrderedDict(checkpoint)  # `model.state_dict()` saved as is stays an OrderedDict
        if not async_save:
            if host.is_global_zero:
                host.checkpoint_io.save_checkpoint(checkpoint=checkpoint, path=path, storage_options=None)
            return None
        if not host.is_global_zero:
            return self.start_background(path, None)
        from fabric.checkpoint.background import snapshot

        copied = snapshot(checkpoint)
        checkpoint_io = host.checkpoint_io
        # Only rank 0 writes a file, and with no collective: nothing in this thread talks to other processes.
        return self.start_background(
            path, lambda: checkpoint_io.save_checkpoint(checkpoint=copied, path=path, storage_options=None)
        )

    def _save_directory(
        self,
        path: str,
        state: Mapping[str, Any],
        filter: Filter,
        owners: Owners,
        per_rank_keys: Collection[str],
        with_resume: bool,
        async_save: bool = False,
    ) -> AsyncSave | None:
        host = self.host
        sharded.check_directory_target(path)
        shards: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for key, obj in state.items():
            if isinstance(obj, Module):
                _apply_filter(shards, key, states.module_state(obj), filter)
            elif isinstance(obj, Optimizer):
                _apply_filter(shards, key, states.optimizer_state(_owner(obj, owners, state), obj), filter)
            else:
                _apply_filter(meta, key, _plain(obj), filter)
        if with_resume:
            meta.update(self.resume_state(state, per_rank_keys))
        if not async_save:
            self.write_directory(path, lambda tmp: host.save_shards(shards, tmp), meta)
            return None
        from fabric.checkpoint.background import snapshot

        collectives = self.collectives_for_background()
        copied_shards, copied_meta = snapshot(shards), snapshot(meta)
        group = collectives.group

        def write() -> None:
            self.write_directory(
                path,
                lambda tmp: sharded.save_shards(copied_shards, tmp, process_group=group),
                copied_meta,
                collectives=collectives,
            )

        return self.start_background(path, write)

    def write_directory(
        self,
        path: str,
        write_parts: Callable[[str], None],
        meta: dict[str, Any],
        collectives: Collectives | None = None,
    ) -> None:
        """Write a checkpoint directory atomically; every process calls this.

        ``write_parts(tmp)`` runs on every process and writes the engine's files (DCP shards, a
        DeepSpeed engine's partitions) into the temporary directory; ``meta`` (plain values and the
        resume state) goes into ``meta.pt``. Then every process checksums its share of the files, rank 0
        writes the manifest last and swaps the directory in. A failure on the way removes the temporary
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
            write_parts(tmp)
            if host.is_global_zero:
                atomic_save(meta, os.path.join(tmp, sharded.META_FILE))
            host.barrier()
            names = host.broadcast(sharded.files_to_record(tmp) if host.is_global_zero else None)
            mine = {name: sharded.checksum(os.path.join(tmp, name)) for name in _my_share(names, host)}
            checksums = {name: record for part in host.gather_object(mine) for name, record in part.items()}
            if host.is_global_zero:
                sharded.write_manifest(tmp, checksums)
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
        if error is not None:
            raise error

    def collectives_for_background(self) -> GroupCollectives | SingleProcess:
        """The process group background writes talk on: created once, by every process, on this thread."""
        if self._background_collectives is None:
            import torch.distributed as dist

            from fabric.checkpoint.background import GroupCollectives, SingleProcess

            if dist.is_available() and dist.is_initialized():
                self._background_collectives = GroupCollectives.create()
            else:
                self._background_collectives = SingleProcess()
        return self._background_collectives

    def start_background(self, path: str, write: Callable[[], None] | None) -> AsyncSave:
        """Start ``write`` in a background thread (``None``: this process writes nothing); return its handle."""
        from fabric import lifecycle
        from fabric.checkpoint.background import AsyncSave, finish_at_exit

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
        strict: bool = True,
        weights_only: bool = True,
        restore_rng: bool = True,
        owners: Owners | None = None,
    ) -> Any:
        """Restore ``state`` in place from ``path``; return what the checkpoint holds beyond it.

        Without ``state`` the whole checkpoint is returned and nothing is restored. A module or an
        optimizer as ``state`` reads the file as its plain state dict (:meth:`load_raw`), as Lightning
        does, and returns ``{}``.
        """
        if isinstance(state, (Module, Optimizer)):
            # Lightning's `fabric.load(path, model)`: the file is that object's plain state dict.
            owner = (owners or {}).get(state) if isinstance(state, Optimizer) else None
            self.load_raw(path, state, strict=strict, weights_only=weights_only, owner=owner)
            return {}
        if state is not None:
            _check_state(state, "load")
        self.wait_for_pending()
        owners = owners or {}
        path = os.fspath(path)
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
            checkpoint, restored = self._load_directory(path, state, strict, weights_only, owners)
        else:
            checkpoint = self.host.checkpoint_io.load_checkpoint(
                path, map_location="cpu", weights_only=weights_only
            )
        if state is None:
            if isinstance(checkpoint, dict):
                for key in RESERVED_KEYS:
                    checkpoint.pop(key, None)
            return checkpoint
        return self.restore(
            path, checkpoint, state, restored, strict=strict, restore_rng=restore_rng, owners=owners
        )

    def restore(
        self,
        path: str,
        checkpoint: Any,
        state: dict[str, Any],
        restored: Collection[str] = (),
        strict: bool = True,
        restore_rng: bool = True,
        owners: Owners | None = None,
    ) -> dict[str, Any]:
        """Restore the entries of ``state`` from a read ``checkpoint`` (except ``restored``, already done).

        Models and optimizers through the strategy's hooks, objects with ``load_state_dict`` in place,
        plain values replaced in ``state``; then the precision's and this process's resume state.
        Returns what ``checkpoint`` holds beyond ``state``.
        """
        owners = owners or {}
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
                self.host.load_optimizer_state_dict(obj, value, owners.get(obj) or _owner_in(obj, state))
            elif isinstance(obj, Stateful):
                obj.load_state_dict(value)
            else:
                state[key] = value
        if precision_state is not None:
            self.host.precision.load_state_dict(precision_state)
        if per_rank is not None:
            self._restore_per_rank(path, per_rank, state, restore_rng)
        return checkpoint

    def _load_directory(
        self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool, owners: Owners
    ) -> tuple[dict[str, Any], set[str]]:
        """Verify a directory, load its shards into the modules and optimizers of ``state``, return the rest."""
        metadata = self._verified_metadata(path, weights_only)
        meta = self.read_meta(path, weights_only)
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
                modules[key] = _owner(obj, owners, state)
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

    @staticmethod
    def read_meta(path: str, weights_only: bool) -> dict[str, Any]:
        """The ``meta.pt`` of a checkpoint directory: plain values and resume state (``{}`` if absent)."""
        meta_path = os.path.join(path, sharded.META_FILE)
        if not os.path.exists(meta_path):
            return {}
        meta = safe_load(meta_path, weights_only=weights_only)
        if not isinstance(meta, dict):
            raise CheckpointError(f"'{meta_path}' does not hold a dict; the checkpoint is damaged.")
        return meta

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
    import tempfile

    from fabric.checkpoint.deepspeed_format import consolidate_deepspeed

    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "consolidated.pt")
        consolidate_deepspeed(path, target, weights_only=weights_only)
        checkpoint = safe_load(target, weights_only=weights_only)
    checkpoint.pop(DEEPSPEED_KEY, None)
    return checkpoint


def convert_plain(state: Mapping[str, Any], filter: Filter) -> dict[str, Any]:
    """Entries that are not models or optimizers, as stored: ``state_dict()`` of stateful objects, filtered."""
    converted: dict[str, Any] = {}
    for key, obj in state.items():
        _apply_filter(converted, key, _plain(obj), filter)
    return converted


def check_directory_alone(path: str) -> dict[str, dict[str, int]] | None:
    """:meth:`Checkpointer.verify_directory` on one process without a strategy (``fabric consolidate``)."""
    manifest = sharded.read_manifest(path)
    if manifest is None:
        rank_zero_warn(f"'{path}' has no {sharded.MANIFEST_FILE}: its files cannot be verified.")
        return None
    problems = sharded.verify_files(path, manifest, sorted(manifest))
    if problems:
        raise sharded.integrity_error(path, problems)
    return manifest


def check_manifest_covers(path: str, manifest: Mapping[str, Any], metadata: Any) -> Any:
    """Every file the checkpoint reads must be one the manifest vouches for; return ``metadata``."""
    needed = sharded.referenced_files(metadata) | {sharded.DCP_METADATA_FILE}
    if os.path.exists(os.path.join(path, sharded.META_FILE)):
        needed.add(sharded.META_FILE)
    unlisted = sorted(needed - set(manifest))
    if unlisted:
        raise sharded.integrity_error(
            path, [f"{unlisted} are not in its manifest (files were added or swapped)"]
        )
    return metadata


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError (disk full, file too large) behind a failed save, also inside DCP's per-rank failures."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(error, CheckpointException):
        for failure in error.failures.values():
            found = _os_error_behind(failure[0] if isinstance(failure, tuple) else failure)
            if found is not None:
                return found
        return None
    return _os_error_behind(error)


def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _my_share(names: list[str], host: Collectives) -> list[str]:
    return names[host.global_rank :: host.world_size]


def _plain(obj: Any) -> Any:
    return obj.state_dict() if isinstance(obj, Stateful) else obj


def _apply_filter(target: dict[str, Any], key: str, value: Any, filter: Filter) -> None:
    """Store ``value`` under ``key``, keeping only the items ``filter[key]`` accepts (Lightning's rule).

    Values that are not dicts cannot be filtered and are stored as they are; a dict from which the
    filter keeps nothing leaves no entry.
    """
    if key in filter and isinstance(value, Mapping):
        kept = {k: v for k, v in value.items() if filter[key](k, v)}
        if kept:
            target[key] = kept
    else:
        target[key] = value


def _check_state(state: Any, method: str) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(
            f"Fabric.{method}(path, state): `state` must be a dict like {{'model': model}}, got {type(state).__name__}."
        )
    reserved = sorted(RESERVED_KEYS.intersection(state))
    if reserved:
        raise ValueError(
            f"Fabric.{method}(path, state): the keys {reserved} are reserved for the resume state Fabric stores by "
            f"itself. Rename those entries of `state`."
        )


def _check_filter(filter: Any, state: Mapping[str, Any]) -> Filter:
    if filter is None:
        return {}
    if not isinstance(filter, Mapping) or not all(callable(f) for f in filter.values()):
        raise TypeError(
            "Fabric.save(filter=...): pass a dict mapping state keys to `fn(key, value) -> bool`."
        )
    unknown = sorted(set(filter) - set(state))
    if unknown:
        # Lightning ignores these; a filter that names no entry is almost always a typo, so it is an error here.
        raise KeyError(
            f"Fabric.save(filter=...) names {unknown}, which are not keys of `state` ({sorted(state)}). Filter "
            f"keys must match the state's keys."
        )
    return filter


def _owner(optimizer: Optimizer, owners: Owners, state: Mapping[str, Any] | None = None) -> Module:
    """The model ``optimizer`` updates: sharded optimizer state is keyed by that model's parameter names."""
    module = owners.get(optimizer) or _owner_in(optimizer, state or {})
    if module is None:
        raise KeyError(
            f"A sharded checkpoint stores {type(optimizer).__name__}'s state by parameter name, so it needs the "
            f"model the optimizer updates: set both up with `fabric.setup(model, optimizer)` (or `setup_module` "
            f"then `setup_optimizers`), or put the model in the same `state`."
        )
    return module


def _owner_in(optimizer: Optimizer, state: Mapping[str, Any]) -> Module | None:
    """The module in ``state`` whose parameters ``optimizer`` updates (for objects Fabric did not set up)."""
    first = next((p for group in optimizer.param_groups for p in group["params"]), None)
    for obj in state.values():
        if isinstance(obj, Module) and any(p is first for p in obj.parameters()):
            return obj
    return None


__all__ = ["PER_RANK_STATE_KEY", "PRECISION_STATE_KEY", "CheckpointHost", "Checkpointer"]
