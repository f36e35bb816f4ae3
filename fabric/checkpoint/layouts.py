"""How a checkpoint is written, per layout: the small classes the pipeline picks by the strategy's
``checkpoint_layout`` (``"file"``, ``"sharded"``; DeepSpeed's is :mod:`fabric.checkpoint.deepspeed_layout`).

A layout decides what goes where and hands the writing to the pipeline's shared steps (atomic
directory writes, resume state, background saves). Reading is shared by all of them: every layout
loads into every strategy (:meth:`fabric.checkpoint.pipeline.Checkpointer.read`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from torch.nn import Module
from torch.optim import Optimizer

from fabric.checkpoint import sharded, states
from fabric.checkpoint.background import AsyncSave, GroupCollectives, SingleProcess, Staging, snapshot
from fabric.checkpoint.checkpoint_io import is_remote
from fabric.checkpoint.host import CheckpointHost, Collectives
from fabric.checkpoint.io import CheckpointError
from fabric.checkpoint.options import (
    DEFAULT_LOAD,
    LoadOptions,
    SaveOptions,
    apply_filter,
    owner,
    plain,
)


class Pipeline(Protocol):
    """The steps of :class:`~fabric.checkpoint.pipeline.Checkpointer` that a layout uses."""

    @property
    def host(self) -> CheckpointHost: ...

    #: the CPU copies an asynchronous sharded save keeps for the next one
    staging: Staging

    def resume_state(self, state: Mapping[str, Any], per_rank_keys: Collection[str]) -> dict[str, Any]: ...

    def write_directory(
        self,
        path: str,
        write_parts: Callable[[str], dict[str, dict[str, int]] | None],
        meta: dict[str, Any],
        collectives: Collectives | None = None,
    ) -> None: ...

    def collectives_for_background(self) -> GroupCollectives | SingleProcess: ...

    def start_background(self, path: str, write: Callable[[], None] | None) -> AsyncSave: ...

    def verify_directory(self, path: str) -> dict[str, dict[str, int]] | None: ...

    def restore(
        self,
        path: str,
        checkpoint: Any,
        state: dict[str, Any],
        restored: Collection[str] = (),
        options: LoadOptions = DEFAULT_LOAD,
    ) -> dict[str, Any]: ...

    def read(self, path: str, state: dict[str, Any] | None, options: LoadOptions) -> Any: ...


class Layout(Protocol):
    """Writes ``state`` at ``path`` (every process calls it) and reads it back into ``state``."""

    def save(
        self, pipeline: Pipeline, path: str, state: Mapping[str, Any], options: SaveOptions
    ) -> AsyncSave | None: ...

    def load(
        self, pipeline: Pipeline, path: str, state: dict[str, Any] | None, options: LoadOptions
    ) -> Any: ...


def wants_resume(state: Mapping[str, Any], options: SaveOptions) -> bool:
    """Whether the resume state goes in: when ``state`` holds something Fabric set up.

    A dict of plain values is written exactly as given, so ``torch.load`` returns it unchanged.
    """
    return bool(options.per_rank_keys) or any(isinstance(v, (Module, Optimizer)) for v in state.values())


class FileLayout:
    """One file, written by global rank 0 through the ``CheckpointIO`` plugin (atomic and checksummed)."""

    def save(
        self, pipeline: Pipeline, path: str, state: Mapping[str, Any], options: SaveOptions
    ) -> AsyncSave | None:
        filter, owners = options.filter or {}, options.owners
        host = pipeline.host
        checkpoint: dict[str, Any] = {}
        for key, obj in state.items():
            if isinstance(obj, Module):
                value = host.get_module_state_dict(obj)
            elif isinstance(obj, Optimizer):
                value = host.get_optimizer_state(obj, owners.get(obj))
            else:
                value = plain(obj)
            apply_filter(checkpoint, key, value, filter)
        if wants_resume(state, options):
            checkpoint.update(pipeline.resume_state(state, options.per_rank_keys))
        elif isinstance(state, OrderedDict):
            checkpoint = OrderedDict(checkpoint)  # `model.state_dict()` saved as is stays an OrderedDict
        if not options.async_save:
            if host.is_global_zero:
                host.checkpoint_io.save_checkpoint(checkpoint=checkpoint, path=path, storage_options=None)
            return None
        if not host.is_global_zero:
            return pipeline.start_background(path, None)
        copied = snapshot(checkpoint)
        checkpoint_io = host.checkpoint_io
        # Only rank 0 writes a file, and with no collective: nothing in this thread talks to other processes.
        return pipeline.start_background(
            path, lambda: checkpoint_io.save_checkpoint(checkpoint=copied, path=path, storage_options=None)
        )

    def load(self, pipeline: Pipeline, path: str, state: dict[str, Any] | None, options: LoadOptions) -> Any:
        return pipeline.read(path, state, options)


class ShardedLayout:
    """A directory: every process writes its shards, a manifest is written last, swapped in when complete."""

    def save(
        self, pipeline: Pipeline, path: str, state: Mapping[str, Any], options: SaveOptions
    ) -> AsyncSave | None:
        filter, owners = options.filter or {}, options.owners
        host = pipeline.host
        if is_remote(path):
            raise CheckpointError(
                f"Sharded checkpoints are written to a local or mounted file system; '{path}' is remote. Save "
                f"to a local directory (and copy it), or use a full state dict (e.g. "
                f"FSDPStrategy(state_dict_type='full'))."
            )
        sharded.check_directory_target(path)
        shards: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for key, obj in state.items():
            if isinstance(obj, Module):
                apply_filter(shards, key, states.module_state(obj), filter)
            elif isinstance(obj, Optimizer):
                apply_filter(shards, key, states.optimizer_state(owner(obj, owners, state), obj), filter)
            else:
                apply_filter(meta, key, plain(obj), filter)
        if wants_resume(state, options):
            meta.update(pipeline.resume_state(state, options.per_rank_keys))
        if not options.async_save:
            pipeline.write_directory(path, lambda tmp: host.save_shards(shards, tmp), meta)
            return None
        collectives = pipeline.collectives_for_background()
        copied_shards, copied_meta = snapshot(shards, pipeline.staging), snapshot(meta)
        group = collectives.group

        def write() -> None:
            pipeline.write_directory(
                path,
                lambda tmp: sharded.save_shards(copied_shards, tmp, process_group=group),
                copied_meta,
                collectives=collectives,
            )

        return pipeline.start_background(path, write)

    def load(self, pipeline: Pipeline, path: str, state: dict[str, Any] | None, options: LoadOptions) -> Any:
        return pipeline.read(path, state, options)


__all__ = ["FileLayout", "Layout", "Pipeline", "ShardedLayout", "wants_resume"]
