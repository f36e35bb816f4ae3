from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fabric.environments import ClusterEnvironment

REPO_ROOT = Path(__file__).resolve().parents[2]


class _Minimal(ClusterEnvironment):
    @property
    def creates_processes_externally(self) -> bool:
        return False

    @property
    def main_address(self) -> str:
        return "127.0.0.1"

    @property
    def main_port(self) -> int:
        return 1234

    @staticmethod
    def detect() -> bool:
        return False

    def world_size(self) -> int:
        return 1

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return 0

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return 0


def test_abstract_interface_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        ClusterEnvironment()  # type: ignore[abstract]


def test_validate_settings_and_teardown_default_to_no_op() -> None:
    env = _Minimal()
    env.validate_settings(num_devices=8, num_nodes=4)
    env.teardown()


def test_importing_environments_stays_cheap() -> None:
    # A bare `fabric` package stands in for fabric/__init__.py, whose imports (torch) are not this
    # package's cost; what is left to load is fabric.environments alone.
    code = (
        "import sys, types;"
        f" root = types.ModuleType('fabric'); root.__path__ = [{str(REPO_ROOT / 'fabric')!r}];"
        " sys.modules['fabric'] = root;"
        " import fabric.environments; fabric.environments.detect_environment();"
        " heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mpi4py', 'numpy'));"
        " print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
