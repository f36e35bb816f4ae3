"""One process on one XLA device (a TPU core, or XLA's CPU back end): ``strategy="single_xla"``."""

from __future__ import annotations

import torch

from fabric.accelerators.accelerator import Accelerator
from fabric.precision import Precision
from fabric.strategies.fsdp_policy import ShardingPolicy
from fabric.strategies.single_device import SingleDeviceStrategy
from fabric.strategies.xla_common import XLAStepMixin


class SingleXLAStrategy(XLAStepMixin, SingleDeviceStrategy):
    """The model, the batches and ``fabric.to_device`` go to the XLA device; the step is marked after
    every ``optimizer.step()``, so the training loop needs no XLA call.

    Args:
        activation_checkpointing_policy: module classes (or a callable ``fn(module) -> bool``) whose
            activations are recomputed in the backward instead of kept, as in ``FSDPStrategy``; applied with
            torch-xla's ``checkpoint_module``.

    Chosen by ``Fabric(accelerator="tpu")`` (or ``"xla"``) with ``devices=1``.

    Example::

        fabric = Fabric(accelerator="tpu", devices=1, precision="bf16-true")
    """

    def __init__(
        self,
        device: str | torch.device = "xla:0",
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        activation_checkpointing_policy: ShardingPolicy | None = None,
    ) -> None:
        super().__init__(device=device, accelerator=accelerator, precision=precision)
        self._init_xla_options(activation_checkpointing_policy)
        if self.root_device.type != "xla":
            raise ValueError(f"SingleXLAStrategy(device={device!r}): expected an XLA device such as 'xla:0'.")

    def setup_environment(self) -> None:
        # Importing torch-xla registers the "xla" device with torch; before that it cannot hold tensors.
        self._setup_xla()
        super().setup_environment()
