"""DeepSpeed's checkpoint directory as a layout of the one pipeline: written and read by the engine.

The engine writes its own files (model states, each rank's ZeRO optimizer partition) into the
temporary directory of an atomic directory write; the pipeline adds ``meta.pt`` (the other entries of
``state`` and every process's resume state), checksums and the manifest, as for a sharded checkpoint.
Asynchronous saves snapshot the engine's files to CPU memory and write them in the background
(:mod:`fabric.checkpoint.deepspeed_async`). The format itself (what any process can do with such a
directory without an engine) is :mod:`fabric.checkpoint.deepspeed_format`.

Checkpoint layout (a directory)::

    ckpt/
      latest, zero_to_fp32.py            # DeepSpeed's
      checkpoint/                        # DeepSpeed's tag directory: model states, one optimizer
        mp_rank_00_model_states.pt       # partition per rank (and, in stage 3, model partitions)
        zero_pp_rank_0_mp_rank_00_optim_states.pt ...
      meta.pt                            # ours: plain values, per-rank resume state, which keys
                                         # named the model and the optimizer
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol, cast

from fabric.checkpoint import sharded
from fabric.checkpoint.background import AsyncSave, snapshot
from fabric.checkpoint.deepspeed_format import (
    TAG,
    check_engine_files,
    read_whole_checkpoint,
    resolve_deepspeed_checkpoint,
)
from fabric.checkpoint.directory import read_meta
from fabric.checkpoint.host import CheckpointHost
from fabric.checkpoint.io import CheckpointError
from fabric.checkpoint.keys import DEEPSPEED_KEY
from fabric.checkpoint.layouts import Pipeline
from fabric.checkpoint.options import LoadOptions, SaveOptions, convert_plain


class DeepSpeedHost(CheckpointHost, Protocol):
    """What the DeepSpeed layout asks of its strategy beyond any strategy's hooks."""

    @property
    def zero_stage(self) -> int: ...

    #: whether the engine leaves frozen parameters out of its files
    exclude_frozen_parameters: bool

    def split_engine_state(self, state: Mapping[str, Any]) -> tuple[Any, str, str | None, dict[str, Any]]:
        """The one engine in ``state``, the keys of its model and optimizer, and everything else."""
        ...

    def is_engine_optimizer(self, obj: Any) -> bool:
        """Whether ``obj`` is an optimizer a DeepSpeed engine of this strategy drives."""
        ...


class DeepSpeedLayout:
    """A directory written by the DeepSpeed engine, plus ``meta.pt`` and a manifest, swapped in atomically."""

    def save(
        self, pipeline: Pipeline, path: str, state: Mapping[str, Any], options: SaveOptions
    ) -> AsyncSave | None:
        """``state`` must hold the one DeepSpeed model (and may hold its optimizer); the rest goes into ``meta.pt``."""
        host = _deepspeed_host(pipeline)
        engine, meta = self._engine_and_meta(pipeline, host, state, options)
        if not options.async_save:

            def write_engine(tmp: str) -> None:
                engine.save_checkpoint(
                    tmp, tag=TAG, save_latest=True, exclude_frozen_parameters=host.exclude_frozen_parameters
                )

            pipeline.write_directory(path, write_engine, meta)
            return None
        return self._save_async(pipeline, host, engine, path, meta)

    @staticmethod
    def _save_async(
        pipeline: Pipeline, host: DeepSpeedHost, engine: Any, path: str, meta: dict[str, Any]
    ) -> AsyncSave:
        """The synchronous save's checkpoint, written in a background thread after a copy to CPU memory.

        On the training thread (the call blocks for this part) DeepSpeed runs its save as usual, but
        hands each file to a checkpoint engine of ours that copies its state to CPU memory
        (:mod:`fabric.checkpoint.deepspeed_async`); the copies are then written, checksummed and
        swapped in atomically in the background, as :mod:`fabric.checkpoint.background` describes.
        """
        from fabric.checkpoint import deepspeed_async  # optional engine: deepspeed

        zipfile = deepspeed_async.zipfile_serialization(engine)
        # Staged beside where the checkpoint will be (through a link: beside its target), like the temporary directory.
        target = os.path.realpath(path) if os.path.islink(path) else path
        sharded.check_directory_target(target)
        collectives = pipeline.collectives_for_background()
        staging = host.broadcast(sharded.create_temporary_directory(target) if host.is_global_zero else None)
        try:
            with deepspeed_async.snapshot_engine(engine, staging) as snapshotter:
                engine.save_checkpoint(
                    staging,
                    tag=TAG,
                    save_latest=True,
                    exclude_frozen_parameters=host.exclude_frozen_parameters,
                )
        except BaseException:
            if host.is_global_zero:
                deepspeed_async.remove_staging(staging)
            raise
        mine = staging if host.is_global_zero else None
        write_parts = deepspeed_async.background_writer(mine, snapshotter.files, zipfile, collectives)
        copied_meta = snapshot(meta)

        def write() -> None:
            try:
                pipeline.write_directory(path, write_parts, copied_meta, collectives=collectives)
            finally:
                deepspeed_async.remove_staging(mine)

        return pipeline.start_background(path, write)

    @staticmethod
    def _engine_and_meta(
        pipeline: Pipeline, host: DeepSpeedHost, state: Mapping[str, Any], options: SaveOptions
    ) -> tuple[Any, dict[str, Any]]:
        """The engine that saves the model and optimizer, and ``meta.pt``'s content (the rest of ``state``)."""
        filter = options.filter or {}
        engine, module_key, optimizer_key, rest = host.split_engine_state(state)
        bad_filter = [k for k in filter if k in (module_key, optimizer_key)]
        if bad_filter:
            raise ValueError(
                f"Fabric.save(filter=...) names {bad_filter}: with DeepSpeed the model and optimizer are saved "
                f"whole by the engine and cannot be filtered. Filter only plain entries of `state`."
            )
        meta = convert_plain(rest, filter)
        meta.update(pipeline.resume_state(state, options.per_rank_keys))
        meta[DEEPSPEED_KEY] = {"module": module_key, "optimizer": optimizer_key, "stage": host.zero_stage}
        return engine, meta

    def load(self, pipeline: Pipeline, path: str, state: dict[str, Any] | None, options: LoadOptions) -> Any:
        """Load a DeepSpeed checkpoint directory, or a full single file (model weights and plain values)."""
        host = _deepspeed_host(pipeline)
        if os.path.isfile(path) or state is None:
            # A single file (e.g. consolidated, or written by another strategy): the generic reader
            # restores the model through `load_module_state_dict`; the optimizer cannot be mapped
            # onto ZeRO's partitions.
            if state is not None:
                _refuse_full_optimizer(host, state)
            if state is None and not os.path.isfile(path):
                return read_whole_checkpoint(resolve_deepspeed_checkpoint(path), options.weights_only)
            return pipeline.read(path, state, options)
        directory = resolve_deepspeed_checkpoint(path)
        engine, module_key, optimizer_key, _ = host.split_engine_state(state)
        pipeline.verify_directory(directory)
        if options.weights_only:
            check_engine_files(directory)
        meta = read_meta(directory, options.weights_only)
        meta.pop(DEEPSPEED_KEY, None)
        load_path, _ = engine.load_checkpoint(
            directory,
            tag=TAG,
            load_module_strict=options.strict,
            load_optimizer_states=optimizer_key is not None,
            load_lr_scheduler_states=False,
            load_module_only=optimizer_key is None,
        )
        if load_path is None:
            raise CheckpointError(
                f"DeepSpeed found no checkpoint in '{directory}' (tag '{TAG}'). Pass a directory written by "
                f"`fabric.save` under DeepSpeedStrategy."
            )
        restored = [k for k in (module_key, optimizer_key) if k is not None]
        return pipeline.restore(directory, meta, state, restored, options)


def _deepspeed_host(pipeline: Pipeline) -> DeepSpeedHost:
    # The pipeline picks this layout only for a strategy whose `checkpoint_layout` is "deepspeed".
    return cast(DeepSpeedHost, pipeline.host)


def _refuse_full_optimizer(host: DeepSpeedHost, state: Mapping[str, Any]) -> None:
    for key, obj in state.items():
        if host.is_engine_optimizer(obj):
            raise CheckpointError(
                f"DeepSpeedStrategy: loading the optimizer `{key}` from a single full file is not supported: "
                f"ZeRO keeps its optimizer state in its own partitioned layout. Load only the model (and plain "
                f"values) from the file, e.g. fabric.load(path, {{'model': model}}), or resume from a "
                f"DeepSpeed checkpoint directory."
            )


__all__ = ["DeepSpeedHost", "DeepSpeedLayout"]
