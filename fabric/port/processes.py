"""The process boilerplate: process group, DDP/DataParallel wrapping, samplers, spawn entry points.

Under the converted script ``fabric.launch()`` starts the process group from torchrun's (or SLURM's)
variables, so an ``init_process_group`` that reads the same variables (no rank, world size or address
of its own) is removed, and so is ``destroy_process_group``. ``model = DDP(model, device_ids=...)``
becomes ``model = fabric.setup_module(model)``; ``model.module`` keeps working on the result.
A ``DistributedSampler`` works unchanged once the process group exists, so it stays (and so does its
``set_epoch``). A ``torch.multiprocessing.spawn`` entry point is converted only in the shape
``fabric.port.spawn`` proves; otherwise nothing in the file is rewritten.
"""

from __future__ import annotations

import libcst as cst

from fabric.port.entry import creation_args
from fabric.port.rules import Rule, all_nodes, kwargs, only_call, positional, removed
from fabric.port.spawn import SPAWN, replacement

_INIT = ("torch.distributed.init_process_group", "torch.distributed.distributed_c10d.init_process_group")
_DESTROY = (
    "torch.distributed.destroy_process_group",
    "torch.distributed.distributed_c10d.destroy_process_group",
)
_DDP = (
    "torch.nn.parallel.DistributedDataParallel",
    "torch.nn.parallel.distributed.DistributedDataParallel",
    "torch.nn.DistributedDataParallel",
)
_DP = (
    "torch.nn.DataParallel",
    "torch.nn.parallel.DataParallel",
    "torch.nn.parallel.data_parallel.DataParallel",
)
#: init_process_group arguments that say nothing the environment does not
_ENV_INIT_ARGS = {"backend", "timeout"}
_WRAP_ARGS = {"device_ids", "output_device"}


class ProcessRule(Rule):
    def analyze(self, module: cst.Module) -> None:
        for node in all_nodes(module):
            if isinstance(node, cst.Call) and self.ctx.is_(node.func, *_INIT, *_DDP):
                self.ctx.distributed = True

    def statement(self, original, updated):  # type: ignore[no-untyped-def]
        spawn = self.ctx.spawn
        if spawn is not None and original is spawn.statement:
            self.ctx.done(
                original,
                "Fabric(strategy='ddp', devices=nprocs) starts the same processes (it re-runs the command for "
                "ranks 1..N-1, as torchrun would) and each calls the worker with its rank",
                "what the script computes before this line now runs in every process: seed it if it is random",
            )
            return cst.FlattenSentinel(replacement(self.ctx, spawn, creation_args(self.ctx)))
        if spawn is not None and any(original is s for s in spawn.inits):
            self.ctx.done(
                original, "fabric.launch() starts the process group with the worker's rank and world size"
            )
            return removed(original)
        call = only_call(original)
        if call is None:
            return None
        if self.ctx.is_(call.func, *_INIT):
            extra = set(kwargs(call)) - _ENV_INIT_ARGS
            init_method = kwargs(call).get("init_method")
            env_method = (
                init_method is not None
                and isinstance(init_method.value, cst.SimpleString)
                and (init_method.value.evaluated_value == "env://")
            )
            if (
                len(positional(call)) > 1
                or (extra - {"init_method"})
                or (init_method is not None and not env_method)
            ):
                self.ctx.left(
                    original,
                    "init_process_group with its own rank, world size or address",
                    "let the launcher set them (torchrun, `fabric run`, SLURM) and delete this call: "
                    "`fabric.launch()` starts the process group",
                )
                return None
            self.ctx.done(original, "fabric.launch() starts the process group from the launcher's variables")
            self.ctx.fabric()  # the script needs its Fabric object (created with the launch)
            return removed(original)
        if self.ctx.is_(call.func, *_DESTROY) and not call.args:
            self.ctx.done(original, "Fabric leaves the process group at exit")
            self.ctx.fabric()
            return removed(original)
        return None

    def call(self, original, updated):  # type: ignore[no-untyped-def]
        if self.ctx.is_(original.func, *SPAWN) and self.ctx.spawn is None:
            self.ctx.left(
                original,
                f"a torch.multiprocessing.spawn entry point the tool cannot prove ({self.ctx.spawn_refused}): "
                "the workers re-import this file, so nothing in it was converted",
                "replace the spawn with `fabric = Fabric(strategy='ddp', devices=NPROCS)`, `fabric.launch()` and "
                "`worker(fabric.local_rank, *args)` (`global fabric` in a function), let `fabric.launch()` start "
                "the process group in place of the worker's init_process_group, and make the changes listed",
            )
            return None
        wrapper = self.ctx.is_(original.func, *_DDP) or self.ctx.is_(original.func, *_DP)
        if not wrapper:
            return None
        args = positional(original)
        if len(args) != 1 or set(kwargs(original)) - _WRAP_ARGS:
            self.ctx.left(
                original,
                "a model wrapper with options the tool does not map",
                "replace it with `model = fabric.setup_module(model)` and pass the options through "
                "`Fabric(strategy=DDPStrategy(...))`",
            )
            return None
        note = ""
        if self.ctx.is_(original.func, *_DP):
            note = (
                "DataParallel ran one process over all GPUs; the port runs one process per device: "
                "start it with `fabric run --devices N` and shard the data (DistributedSampler)"
            )
        self.ctx.done(original, "Fabric wraps the model for its strategy (DDP under torchrun)", note)
        return cst.Call(
            func=self.ctx.fabric("setup_module"),
            args=[updated.args[0].with_changes(comma=cst.MaybeSentinel.DEFAULT)],
        )
