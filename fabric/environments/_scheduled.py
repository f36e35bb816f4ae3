"""The shared part of environments whose scheduler started every process and fixed the ranks."""

from __future__ import annotations

import logging
from typing import ClassVar

from fabric.environments._env import env_int, env_port, require_env
from fabric.environments.cluster_environment import ClusterEnvironment

log = logging.getLogger(__name__)


class ScheduledEnvironment(ClusterEnvironment):
    """Reads world size and global rank from the variables a scheduler sets; the setters are ignored.

    Subclasses name the two variables and the advice shown when one is missing; they still answer
    the questions that differ per scheduler (local and node rank, rendezvous, detection).
    """

    _WORLD_SIZE_VARIABLE: ClassVar[str]
    _GLOBAL_RANK_VARIABLE: ClassVar[str]
    #: Appended to errors about a missing or malformed variable: how to get a correct launch.
    _FIX: ClassVar[str]

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def world_size(self) -> int:
        return env_int(self._WORLD_SIZE_VARIABLE, self._FIX)

    def set_world_size(self, size: int) -> None:
        """Ignored, as in Lightning: the scheduler fixed the world size (``validate_settings`` checks the
        arguments against it before anything starts)."""
        log.debug(
            f"{type(self).__name__}.set_world_size was called, but setting world size is not allowed. Ignored."
        )

    def global_rank(self) -> int:
        return env_int(self._GLOBAL_RANK_VARIABLE, self._FIX)

    def set_global_rank(self, rank: int) -> None:
        """Ignored, as in Lightning: the scheduler fixed this process's rank."""
        log.debug(
            f"{type(self).__name__}.set_global_rank was called, but setting global rank is not allowed. Ignored."
        )


class MasterVariablesEnvironment(ScheduledEnvironment):
    """A launcher that publishes the PyTorch convention: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT`` (torchrun, the Kubeflow operator)."""

    _WORLD_SIZE_VARIABLE = "WORLD_SIZE"
    _GLOBAL_RANK_VARIABLE = "RANK"

    @property
    def main_address(self) -> str:
        return require_env("MASTER_ADDR", self._FIX)

    @property
    def main_port(self) -> int:
        return env_port("MASTER_PORT", self._FIX)
