"""What every XLA strategy shares: importing torch-xla at set-up, marking the step, CPU checkpoints.

XLA records operations lazily into a graph and runs it when the step is marked. A user's loop has no
XLA call in it, so the strategy marks the step right after ``optimizer.step()``: one graph per
training step, which XLA compiles once and then replays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric.accelerators.xla import require_torch_xla
from fabric.strategies._deferred_init import InitLog, InitRecorder, replay_into
from fabric.strategies._materialize import has_meta, take_init_log, tensor_names
from fabric.strategies.fsdp_policy import ShardingPolicy, as_predicate
from fabric.utilities.apply import move_to_device
from fabric.utilities.choices import XLA_PRECISIONS as XLA_PRECISIONS
from fabric.utilities.types import PathLike

#: key of torch-xla's own random state (dropout on an XLA device draws from it) in a process's RNG states
XLA_RNG_KEY = "xla"


def import_torch_xla() -> Any:
    """``torch_xla`` itself, with a clear error (and the install line) when it is missing."""

    require_torch_xla("strategy='xla'")
    import torch_xla

    return torch_xla


def step_marker() -> Callable[[], None]:
    """The function that cuts and runs the pending XLA graph (``torch_xla.sync``), looked up once."""
    torch_xla = import_torch_xla()
    sync = getattr(torch_xla, "sync", None)
    if sync is not None:
        return sync
    import torch_xla.core.xla_model as xm  # torch-xla before 2.6

    return xm.mark_step


def check_autograd_reaches_xla(device: torch.device) -> None:
    """Fail at set-up, with the fix, where torch's autograd engine cannot run a backward on ``device``.

    The engine sizes its per-device queues once, at the first backward of the process. A backward that ran
    before torch-xla was imported (a CPU sanity check, a reference model; Fabric imports torch-xla only when
    an XLA run is set up) leaves it without XLA devices, and every XLA backward then fails with an internal
    assert of torch (pytorch/xla#4174) at the user's first ``fabric.backward``. A backward of one element
    finds this here instead: XLA only records it (nothing is compiled or run).
    """
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        probe.sum().backward()
    except RuntimeError as err:
        raise RuntimeError(
            f"Fabric(accelerator='xla'): torch's autograd engine cannot run a backward on {device}: a backward "
            f"ran in this process before the XLA runtime started, and the engine then knows no XLA devices for "
            f"the rest of the process (pytorch/xla#4174; importing torch_xla is not enough). Create the Fabric "
            f"(it starts the XLA runtime) before running any backward (a CPU check, a reference model)."
        ) from err
    finally:
        del probe


def move_keeping_ties(module: Module, device: torch.device) -> dict[int, tuple[Tensor, Tensor]]:
    """Move ``module`` to ``device``; return ``id(old tensor) -> (old, new)`` for each replaced parameter.

    ``Module.to("xla")`` cannot swap a CPU tensor's storage for an XLA one, so each module replaces its own
    parameters and buffers with new objects: a tensor registered in two places (GPT-2's ``lm_head.weight``
    and ``transformer.wte.weight``) comes out as two independent tensors that then train apart. Every
    registration of one tensor gets the same replacement back, so the tie survives the move. Ties are
    found by identity before the move, not by names; old and new are paired by registration (module and
    attribute), not by position, so a module whose ``parameters()`` order changes is still paired right.
    """
    slots = _slots(module)
    module.to(device)

    def moved(owner: Module, name: str, _old: Tensor, is_parameter: bool) -> Tensor:
        new = (owner._parameters if is_parameter else owner._buffers)[name]
        assert new is not None
        return new

    return _tie_replacements(slots, moved)


def materialize_keeping_ties(
    module: Module, log: InitLog, device: torch.device
) -> dict[int, tuple[Tensor, Tensor]]:
    """Give a model made under ``init_module(empty_init=True)`` the values of its eager construction, on ``device``.

    The recorded construction is replayed on the CPU, from the CPU generator's state when it was recorded, so
    every random draw is the one an eager CPU construction makes (bit for bit, see
    :mod:`fabric.strategies._deferred_init`); each parameter and buffer goes to ``device`` as soon as its
    value is final, so the host holds one full tensor at a time. Tied tensors get one XLA tensor, as in
    :func:`move_keeping_ties`; returns ``id(meta tensor) -> (meta, new)`` for each parameter.
    """
    names = tensor_names(module, log)
    values: dict[str, Tensor] = {}

    def sink(name: str, full: Tensor) -> None:
        values[name] = full.to(device)

    replay_into(log, torch.device("cpu"), names, sink)

    def new(owner: Module, name: str, old: Tensor, is_parameter: bool) -> Tensor:
        value = values.pop(names[id(old)])
        return torch.nn.Parameter(value, requires_grad=old.requires_grad) if is_parameter else value

    return _tie_replacements(_slots(module), new)


Slot = tuple[Module, str, Tensor, bool]  # (owner, attribute, tensor, is a parameter)


def _slots(module: Module) -> list[Slot]:
    """Every registration of a parameter or buffer, a tied tensor once per module that registers it."""
    return [
        (owner, name, tensor, is_parameter)
        for owner in module.modules()
        for table, is_parameter in ((owner._parameters, True), (owner._buffers, False))
        for name, tensor in table.items()
        if tensor is not None
    ]


def _tie_replacements(
    slots: list[Slot], new: Callable[[Module, str, Tensor, bool], Tensor]
) -> dict[int, tuple[Tensor, Tensor]]:
    """Register ``new(slot)`` for the first registration of each tensor, and that same object for the others."""
    replacement: dict[int, Tensor] = {}
    moved: dict[int, tuple[Tensor, Tensor]] = {}
    for owner, name, old, is_parameter in slots:
        first = replacement.get(id(old))
        if first is None:
            first = replacement[id(old)] = new(owner, name, old, is_parameter)
        if (owner._parameters if is_parameter else owner._buffers)[name] is not first:
            setattr(owner, name, first)  # a buffer's new value, or a second registration of a tied tensor
        if is_parameter and first is not old:
            moved[id(old)] = (old, first)
    return moved


def apply_xla_checkpointing(module: Module, policy: Callable[[Module], bool]) -> int:
    """Recompute the activations of each submodule ``policy`` selects in the backward; return how many.

    With torch-xla's ``checkpoint_module``, not torch's checkpoint wrapper: torch's checkpoint saves and
    restores the random state of the tensors' device through ``torch.xla``, a module that does not exist
    (it fails at the first forward), and XLA's compiler would merge a plain recomputation with the forward
    it repeats, saving nothing; torch-xla's checkpoint keeps the two apart. It replaces the submodule's
    ``forward`` in place, so parameters, names and state-dict keys stay as they are. The descendants of a
    selected submodule are not selected again: they are recomputed with it.
    """
    from torch_xla.distributed.fsdp import checkpoint_module  # torch-xla is an optional engine

    count = 0

    def visit(parent: Module) -> None:
        nonlocal count
        for child in parent.children():
            if policy(child):
                if not hasattr(child, "_xla_checkpointed_forward_original"):  # not already checkpointed
                    checkpoint_module(child)
                    count += 1
            else:
                visit(child)

    visit(module)
    return count


def check_no_cache_writes(module: Module, owner: str) -> None:
    """Refuse a ``transformers`` model whose config asks for a key-value cache in training.

    torch-xla's checkpoint runs a block's forward again in the backward, and a block that appends its keys and
    values to the cache appends them twice. ``transformers``' attention cuts the keys it gets back from the
    cache to the sequence's length, so the recomputed attention uses the keys of the first forward; torch-xla's
    checkpoint is reentrant (that forward ran without autograd), so those keys carry no gradient and the
    gradients are wrong, with no error (measured: GPT-2's second loss moved by 2e-3; on the CPU, torch's
    reentrant checkpoint moves GPT-2's gradients by 4.6e-2 and Llama's by 1e-1). torch's non-reentrant
    checkpoint, which ``FSDPStrategy``'s policy applies, keeps them: its gradients are exact with the cache on.
    ``transformers`` drops the cache only under its own ``gradient_checkpointing_enable``, which uses torch's
    checkpoint and fails on XLA. Found by the config's ``use_cache`` attribute; ``transformers`` is not imported.
    """
    config = getattr(module, "config", None)
    if getattr(config, "use_cache", False) is True:
        raise ValueError(
            f"{owner}(activation_checkpointing_policy=...): {type(module).__name__}.config.use_cache is True, and a "
            f"checkpointed block that writes the key-value cache writes it again when the backward recomputes it, "
            f"which silently changes the gradients. Set `model.config.use_cache = False` before `fabric.setup` "
            f"(pass `use_cache=True` to `generate()` to keep the cache there)."
        )


class XLAStepMixin:
    """Marks the XLA step after every optimizer step and writes CPU checkpoints.

    Mixed into the XLA strategies ahead of :class:`~fabric.strategies.strategy.Strategy`.
    """

    _mark_step: Callable[[], None] | None = None

    #: predicate: which submodules recompute their activations in the backward (``None``: none)
    _checkpoint_policy: Callable[[Module], bool] | None = None

    def _init_xla_options(self, checkpoint_policy: ShardingPolicy | None) -> None:
        """What the XLA strategies' constructors share: the checkpointing policy, the pending init recordings."""
        self._checkpoint_policy = as_predicate(
            checkpoint_policy, "activation_checkpointing_policy", type(self).__name__
        )
        #: recordings of constructions under ``init_module(empty_init=True)``, until their model is set up
        self._init_logs: list[InitLog] = []

    def _setup_xla(self) -> None:
        self._mark_step = step_marker()
        #: id(CPU parameter) -> (CPU parameter, its XLA replacement), until the optimizers are set up
        self._moved_parameters: dict[int, tuple[Tensor, Tensor]] = {}

    def setup_environment(self) -> None:
        super().setup_environment()  # type: ignore[misc]
        # after the strategy's own set-up: under SPMD no tensor may exist on XLA before `use_spmd()`
        check_autograd_reaches_xla(self.root_device)  # type: ignore[attr-defined]

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager:
        """The model is created on the CPU, and moved to the XLA device by ``setup``; with ``empty_init=True``
        on the meta device, and ``setup`` gives it the values of that CPU construction, bit for bit.

        Why not on the XLA device (Lightning's ``single_xla`` and ``xla``): torch-xla's generator is neither
        seeded by ``torch.manual_seed`` / ``seed_everything`` nor independent of where the lazy graph is cut
        (measured on torch-xla 2.9: the same draws come out different with a ``torch_xla.sync()`` between
        them), so initial weights drawn on XLA cannot be reproduced from a seed, neither by a second run nor
        by ``empty_init=True``. Drawn by the CPU generator they are the weights the same seeded script gives
        on every other strategy. ``empty_init=True`` records the construction on the meta device (see
        :mod:`fabric.strategies._deferred_init`; ``transformers``' own ``_init_weights`` included) and
        ``setup`` replays it on the CPU one tensor at a time (:func:`materialize_keeping_ties`), so the
        host never holds the whole model.
        """
        stack = ExitStack()
        stack.enter_context(torch.device("meta") if empty_init else torch.device("cpu"))
        stack.enter_context(self.precision.module_init_context())  # type: ignore[attr-defined]
        if empty_init:
            recorder = InitRecorder(torch.device("cpu"))
            self._init_logs.append(recorder.log)
            stack.enter_context(recorder)
        return stack

    def module_to_device(self, module: Module) -> None:
        """Move ``module`` to the XLA device, remembering which new parameter replaced which.

        Unlike a move between CPU and CUDA, ``Module.to("xla")`` creates new ``Parameter`` objects (the
        tensor types are not swappable in place), so an optimizer created before ``setup`` would keep
        updating the CPU copies. :meth:`setup_optimizer` points it at the new ones. A model created under
        ``init_module(empty_init=True)`` gets its recorded construction's values here.
        """
        device = self.root_device  # type: ignore[attr-defined]
        log = take_init_log(self._init_logs, module, torch.device("cpu")) if has_meta(module) else None
        if log is not None:
            self._moved_parameters.update(materialize_keeping_ties(module, log, device))
        else:
            self._moved_parameters.update(move_keeping_ties(module, device))

    def setup_module(self, module: Module) -> Module:
        """Activation checkpointing on the submodules the policy names, then the strategy's own wrapping."""
        if self._checkpoint_policy is not None:
            check_no_cache_writes(module, type(self).__name__)
            apply_xla_checkpointing(module, self._checkpoint_policy)
        return super().setup_module(module)  # type: ignore[misc, no-any-return]

    def replaced_parameters(self) -> Mapping[int, Tensor]:
        return {key: new for key, (_, new) in self._moved_parameters.items()}

    def setup_extra_parameters(
        self, parameters: list[Tensor], optimizer: Optimizer, move: bool = True
    ) -> None:
        """Refused: a tensor cannot be moved to an XLA device in place (the move makes a new object), so
        the optimizer would train a copy that the module holding the parameter never sees."""
        if not move:
            return
        raise ValueError(
            f"Fabric.setup(): {len(parameters)} parameter(s) of {type(optimizer).__name__} are not in the model, "
            f"and {type(self).__name__} cannot move them to the XLA device in place (a move to XLA creates new "
            f"tensors, so the module that holds them would never see the trained values). Make them part of the "
            f"model (e.g. `model.temperature = nn.Parameter(...)`, or the loss module as a submodule of the "
            f"model) before `fabric.setup`."
        )

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        moved = self._moved_parameters
        if moved:
            for group in optimizer.param_groups:
                group["params"] = [moved[id(p)][1] if id(p) in moved else p for p in group["params"]]
            device = self.root_device  # type: ignore[attr-defined]
            for key in [k for k in optimizer.state if id(k) in moved]:
                optimizer.state[moved[id(key)][1]] = move_to_device(optimizer.state.pop(key), device)
        return optimizer

    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Optimizer]]:
        result = super().setup_module_and_optimizers(module, optimizers)  # type: ignore[misc]
        # The optimizers are re-pointed: let the CPU copies of the parameters go.
        self._moved_parameters.clear()
        return result

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        result = super().optimizer_step(optimizer, **kwargs)  # type: ignore[misc]
        assert self._mark_step is not None, "setup_environment() has not run"
        self._mark_step()
        return result

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: PathLike, state: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        """Run pending updates first, so that the values written are the current ones."""
        assert self._mark_step is not None
        self._mark_step()
        super().save_checkpoint(path, state, *args, **kwargs)  # type: ignore[misc]

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """On the CPU: XLA tensors are pickled as references to a device; CPU tensors load anywhere.

        Sharded XLA tensors come back whole from ``.cpu()``.
        """
        return move_to_device(module.state_dict(), torch.device("cpu"))

    def get_optimizer_state(
        self, optimizer: Optimizer, module: Module | None = None, every_rank: bool = False
    ) -> dict[str, Any]:
        return move_to_device(optimizer.state_dict(), torch.device("cpu"))

    def capture_rng_state(self) -> dict[str, Any]:
        """The other generators' states plus torch-xla's (which a CPU run that loads the file ignores)."""
        import torch_xla.core.xla_model as xm

        rng = super().capture_rng_state()  # type: ignore[misc]
        rng[XLA_RNG_KEY] = int(xm.get_rng_state())
        return rng

    def restore_rng_state(self, rng_state: dict[str, Any]) -> None:
        super().restore_rng_state(rng_state)  # type: ignore[misc]
        seed = rng_state.get(XLA_RNG_KEY)
        if seed is not None:
            import torch_xla.core.xla_model as xm

            xm.set_rng_state(int(seed))
