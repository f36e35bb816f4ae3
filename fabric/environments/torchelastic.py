"""Processes started by ``torchrun`` (torch.distributed.elastic)."""

from __future__ import annotations

import os

from fabric.environments._env import env_int, mismatch
from fabric.environments._scheduled import MasterVariablesEnvironment


class TorchElasticEnvironment(MasterVariablesEnvironment):
    """Every process was started by ``torchrun``; ranks and rendezvous come from its variables.

    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` give the ranks, ``GROUP_RANK`` the node (agent) rank,
    ``LOCAL_WORLD_SIZE`` the processes per node and ``MASTER_ADDR``/``MASTER_PORT`` the rendezvous.

    Example::

        # torchrun --nnodes=2 --nproc-per-node=4 --rdzv-endpoint=node001:29500 train.py
        env = TorchElasticEnvironment()
        env.global_rank(), env.world_size(), env.node_rank()  # (6, 8, 1) on node001's neighbour
    """

    _FIX = "Start the script with `torchrun`, which sets it, or do not select TorchElasticEnvironment."

    @staticmethod
    def detect() -> bool:
        """True when ``TORCHELASTIC_RUN_ID`` is set, as ``torch.distributed.is_torchelastic_launched()`` and
        Lightning decide (a stray ``RANK`` left in a shell does not count). A missing rank variable then
        fails when it is read, with a message naming it."""
        return "TORCHELASTIC_RUN_ID" in os.environ

    def local_rank(self) -> int:
        return env_int("LOCAL_RANK", self._FIX)

    def node_rank(self) -> int:
        return env_int("GROUP_RANK", self._FIX)

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """``devices * num_nodes`` must equal torchrun's world size, and ``devices`` its ``--nproc-per-node``.

        The first is Lightning's check, with its wording. The second needs ``LOCAL_WORLD_SIZE``, which
        torchrun always sets; where it is missing (a hand-made launch) only the product is checked, as in
        Lightning. torchrun starts the same number of workers on every node, so the node count is
        ``WORLD_SIZE / LOCAL_WORLD_SIZE``.
        """
        world_size = self.world_size()
        local_world_size = env_int("LOCAL_WORLD_SIZE", self._FIX, default=0)
        if num_devices != local_world_size and local_world_size:
            raise mismatch(
                "devices",
                num_devices,
                local_world_size,
                f"LOCAL_WORLD_SIZE={local_world_size}",
                f"start torchrun with `--nproc-per-node={num_devices}`.",
                ""
                if num_devices * num_nodes == world_size
                else self._product_words(num_devices, num_nodes, world_size),
            )
        if num_devices * num_nodes != world_size:
            per_node = local_world_size or num_devices
            raise mismatch(
                "num_nodes",
                num_nodes,
                world_size // per_node,
                f"WORLD_SIZE={world_size} / {per_node} processes per node",
                f"start torchrun with `--nnodes={num_nodes}`.",
                self._product_words(num_devices, num_nodes, world_size),
            )

    @staticmethod
    def _product_words(num_devices: int, num_nodes: int, world_size: int) -> str:
        """Lightning's wording for the same error, kept so that code matching it keeps matching."""
        return (
            f"you set `devices={num_devices}` and `num_nodes={num_nodes}`, but the product"
            f" ({num_devices} * {num_nodes}) does not match the world size ({world_size})"
        )
