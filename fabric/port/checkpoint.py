"""``torch.save``/``torch.load``: reported, never rewritten.

``fabric.save`` writes on rank 0 and then waits for every process, so a ``torch.save`` under
``if rank == 0`` cannot become one without moving it out of the condition, and a file that another
program reads (``torch.load`` elsewhere, a model hub) must keep ``torch.save``'s format. Neither can
be proven from one file, so the report says what to do instead.
"""

from __future__ import annotations

from fabric.port.rules import Rule


class CheckpointRule(Rule):
    def call(self, original, updated):  # type: ignore[no-untyped-def]
        if self.ctx.is_(original.func, "torch.save"):
            self.ctx.left(
                original,
                "whether another program reads this file cannot be told from this script",
                "if only this script reads it back, call `fabric.save(path, {'model': model, 'optimizer': "
                "optimizer, ...})` on every process (not under a rank check): rank 0 writes atomically",
            )
        elif self.ctx.is_(original.func, "torch.load"):
            self.ctx.left(
                original,
                "the file may come from elsewhere (plain torch.save format)",
                "for files written by `fabric.save`, use `fabric.load(path, state)`; for plain files keep "
                "torch.load or use `fabric.load_raw(path, model)`",
            )
        return None
