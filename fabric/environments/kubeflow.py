"""Pods of a Kubeflow ``PyTorchJob``: one process per pod."""

from __future__ import annotations

from fabric.environments._env import mismatch
from fabric.environments._scheduled import MasterVariablesEnvironment

_REQUIRED = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


class KubeflowEnvironment(MasterVariablesEnvironment):
    """A Kubeflow ``PyTorchJob`` where the operator started one process per pod.

    The operator sets ``MASTER_ADDR``/``MASTER_PORT`` (the master pod's service), ``WORLD_SIZE`` (the
    number of pods) and ``RANK`` (this pod's index). With one process per pod, the pod index is both
    the global rank and the node rank, and the local rank is always 0.

    Not part of automatic detection: its variables are the same ones ``torchrun`` or a hand-written
    multi-node setup uses, and any pod has ``KUBERNETES_PORT``, so guessing would misread those jobs.
    Select it explicitly::

        fabric = Fabric(plugins=[KubeflowEnvironment()])
    """

    _FIX = "Run inside a Kubeflow PyTorchJob, whose operator sets it, or do not select KubeflowEnvironment."

    @staticmethod
    def detect() -> bool:
        """Raises ``NotImplementedError``, as Lightning's does: a PyTorchJob cannot be told apart.

        Its variables are those of ``torchrun`` or a hand-made multi-node launch, and every pod has
        ``KUBERNETES_PORT``, so any answer would misread some jobs; fabric never asks it.
        """
        raise NotImplementedError(
            "The Kubeflow environment can't be detected automatically: its variables"
            f" ({', '.join(_REQUIRED)}) are also set by torchrun and hand-made multi-node launches."
            " Select it explicitly with `Fabric(plugins=[KubeflowEnvironment()])`."
        )

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return self.global_rank()

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """One process per pod: ``devices`` must be 1 and ``num_nodes`` the number of pods."""
        if num_devices != 1:
            raise mismatch(
                "devices",
                num_devices,
                1,
                "KubeflowEnvironment (one process per pod)",
                "add pods to the PyTorchJob (`Worker.replicas`) instead of devices per pod.",
            )
        world_size = self.world_size()
        if num_nodes != world_size:
            raise mismatch(
                "num_nodes",
                num_nodes,
                world_size,
                f"WORLD_SIZE={world_size}",
                f"change the PyTorchJob to {num_nodes} pods (Master plus Worker replicas).",
            )
