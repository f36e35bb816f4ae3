"""`import fabric` never imports DeepSpeed; choosing it without DeepSpeed installed says how to install it.

These run in the default test session too (where DeepSpeed is not installed).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fabric import Fabric
from tests.strategies.multiprocess import launch_env


def test_choosing_deepspeed_without_it_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # `None` in sys.modules makes both `import deepspeed` and find_spec fail, as when it is not installed
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install torch-fabric\[deepspeed\]"):
        Fabric(accelerator="cpu", strategy="deepspeed_stage_2", devices=2)


@pytest.mark.timeout(60)
def test_import_and_configuring_fabric_do_not_import_deepspeed() -> None:
    code = (
        "import sys, fabric\n"
        "from fabric.strategies import registry\n"
        "assert 'deepspeed' not in sys.modules, 'import'\n"
        "try:\n"
        "    fabric.Fabric(accelerator='cpu', strategy='deepspeed_stage_3', devices=2)\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "print('imported' if 'deepspeed' in sys.modules else 'clean')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=launch_env(), capture_output=True, text=True, timeout=50
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("clean")
