"""Checkpoints of a long run in one directory: save every N steps, resume from the newest good one, rotate.

A run on a shared cluster is pre-empted, loses a node, or is restarted by ``fabric run --max-restarts``.
With this manager the loop is the same whether it is a fresh start or the fifth restart::

    manager = CheckpointManager(fabric, "checkpoints", every=100, keep_last=3)
    manager.resume(state)                  # loads the newest complete checkpoint, if there is one
    for batch in loader:                   # a loader in `state` continues where the checkpoint was taken
        train_step(batch)
        if manager.step(state):            # saves every 100 steps, and at once on a stop signal
            break                          # pre-empted: saved (and, on SLURM, requeued); exit cleanly

Checkpoints are named ``step-000000100.ckpt`` (a file, or a directory for sharded strategies). The
step count lives in the name, so the user's state needs no extra entry. Partial writes (the hidden
``.NAME.tmp-*`` files and directories of an interrupted save) are never candidates; a checkpoint that
fails verification is reported and skipped in favour of the next older one.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Any

from fabric import lifecycle
from fabric.checkpoint import reclaim, sharded
from fabric.checkpoint.directory import check_directory_alone, check_manifest_covers
from fabric.checkpoint.io import CheckpointError, verify_file

if TYPE_CHECKING:
    from fabric.fabric import Fabric

_NAME = re.compile(r"^step-(\d+)\.ckpt$")


def _verify(path: str) -> None:
    """Raise if the checkpoint at ``path`` is incomplete or corrupted; return quietly if it is whole.

    The one place that decides "complete": a single file must pass its zip checksums; a directory must
    carry the manifest its save writes last, every file must match it, and a DCP directory's metadata
    must read safely and name only files the manifest vouches for. Nothing is loaded into memory.
    """
    if not os.path.isdir(path):
        verify_file(path)
        return
    if sharded.read_manifest(path) is None:
        raise CheckpointError(f"'{path}' has no {sharded.MANIFEST_FILE}: its save did not finish.")
    manifest = check_directory_alone(path)
    if sharded.is_sharded_checkpoint(path) and manifest is not None:
        check_manifest_covers(path, manifest, sharded.read_metadata(path))


class CheckpointManager:
    """Numbered checkpoints in ``directory``: periodic saves, resume from the newest good one, rotation.

    Args:
        fabric: the run's ``Fabric`` (after ``launch()``); every process creates the manager.
        directory: where the checkpoints go (created if missing; shared by all processes).
        every: :meth:`step` saves every ``every`` steps (``None``: only on a stop signal).
        keep_last: how many of the newest checkpoints to keep (at least 1).
        keep_every: also keep every checkpoint whose step is a multiple of this (``None``: none).
        requeue: after the checkpoint a stop signal asked for, ask SLURM to requeue the job
            (``scontrol requeue``; only when running under SLURM).
        async_save: write the periodic checkpoints of :meth:`step` in the background
            (``Fabric.save(..., async_save=True)``: the loop blocks only for a copy of the state to CPU
            memory, which costs one CPU copy of this process's state). Old checkpoints are rotated
            out only once the new one is complete. The checkpoint a stop signal asks for is always
            written synchronously: the process is about to end.

    Example::

        manager = CheckpointManager(fabric, "checkpoints", every=100, keep_last=3, keep_every=1000)
        manager.resume(state)
        for batch in loader:
            ...
            if manager.step(state):
                break
    """

    def __init__(
        self,
        fabric: Fabric,
        directory: str | os.PathLike[str],
        *,
        every: int | None = None,
        keep_last: int = 3,
        keep_every: int | None = None,
        requeue: bool = True,
        async_save: bool = False,
    ) -> None:
        for name, value, minimum in (("every", every, 1), ("keep_every", keep_every, 1)):
            if value is not None and (not isinstance(value, int) or value < minimum):
                raise ValueError(
                    f"CheckpointManager({name}={value!r}): pass a positive number of steps, or None."
                )
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(
                f"CheckpointManager(keep_last={keep_last!r}): keep at least the newest checkpoint (1 or more)."
            )
        self.fabric = fabric
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.requeue = requeue
        self.async_save = async_save
        #: the number of :meth:`step` calls so far, including those before the checkpoint resumed from
        self.global_step = 0
        if fabric.is_global_zero:
            os.makedirs(self.directory, exist_ok=True)
        lifecycle.watch_signals()  # a signal from now on is a request to save and stop

    # ----------------------------------------------------------------------------------- finding
    def checkpoints(self) -> list[tuple[int, str]]:
        """``(step, path)`` of every checkpoint in the directory, oldest first (unverified)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _NAME.match(name)  # hidden temp files of interrupted saves never match
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def latest(self) -> str | None:
        """The newest checkpoint that passes verification, or ``None``; corrupt ones are reported.

        Global rank 0 looks, and tells the others, so every process loads the same checkpoint. A save
        still being written in the background is finished first.
        """
        self.fabric.wait_for_checkpoint()
        chosen = None
        if self.fabric.is_global_zero:
            for _, path in reversed(self.checkpoints()):
                try:
                    _verify(path)
                except Exception as error:
                    print(
                        f"[fabric] skipping the checkpoint '{path}': it is incomplete or corrupted ({error}).",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                chosen = path
                break
        if self.fabric.world_size > 1:
            chosen = self.fabric.broadcast(chosen, src=0)
        return chosen

    # ---------------------------------------------------------------------------------- resuming
    def resume(self, state: dict[str, Any], **load_kwargs: Any) -> int:
        """Load the newest good checkpoint into ``state`` (in place); return its step, 0 if none.

        ``load_kwargs`` go to :meth:`Fabric.load` (e.g. ``strict=False``).
        """
        path = self.latest()
        if path is None:
            self.global_step = 0
            return 0
        self.fabric.load(path, state, **load_kwargs)
        match = _NAME.match(os.path.basename(path))
        assert match is not None
        self.global_step = int(match.group(1))
        return self.global_step

    # ------------------------------------------------------------------------------------ saving
    def step(self, state: dict[str, Any]) -> bool:
        """Count one training step; save when due or when a stop was requested; ``True``: stop now.

        Call it at the same point of the loop on every process: it agrees on the stop across processes
        (one small all-reduce). On a stop it saves (unless this step's checkpoint was just written),
        requeues the SLURM job if asked to, and returns ``True``.
        """
        self.global_step += 1
        stop = self.fabric.should_stop
        if stop or (self.every is not None and self.global_step % self.every == 0):
            self.save(state, async_save=self.async_save and not stop)
        if stop and self.requeue and self.fabric.is_global_zero:
            lifecycle.requeue_slurm_job()
        return stop

    def save(self, state: dict[str, Any], step: int | None = None, *, async_save: bool = False) -> str:
        """Save ``state`` as the checkpoint of ``step`` (default: :attr:`global_step`), then rotate.

        With ``async_save=True`` it returns once the state is copied to CPU memory; the rotation runs
        on global rank 0 after the background write has committed the new checkpoint.
        """
        step = self.global_step if step is None else step
        path = os.path.join(self.directory, f"step-{step:09d}.ckpt")
        if not async_save:
            self.fabric.save(path, state)  # atomic; every process has finished when it returns
            if self.fabric.is_global_zero:
                self._rotate(keep=path)
            return path
        pending = self.fabric.save(path, state, async_save=True)
        if pending is not None and self.fabric.is_global_zero:
            pending.add_done_callback(lambda: self._rotate(keep=path))
        return path

    def _rotate(self, keep: str) -> None:
        """Delete the checkpoints the policy does not keep (never ``keep``, the one just written)."""
        reclaim.remove_leftovers(self.directory)
        existing = self.checkpoints()
        newest = {path for _, path in existing[-self.keep_last :]}
        for step, path in existing:
            if path == keep or path in newest or (self.keep_every and step % self.keep_every == 0):
                continue
            try:
                reclaim.delete(path)  # gone at once; its space is freed off the training thread
            except FileNotFoundError:
                pass


__all__ = ["CheckpointManager"]
