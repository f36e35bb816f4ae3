"""What the package needs at run time is what it installs (issue 19 #9).

`nox -s example -- --devices 2` (an environment with only `pip install .`) trained, then crashed at the
final save: `RuntimeError: Numpy is not available`. torch does not declare numpy, yet its object
collectives (``all_gather_object``, ``broadcast_object_list``: the per-rank resume state of every
multi-process save, ``fabric.broadcast`` of an object, DCP's planning) call ``tensor.numpy()``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parent.parent

_SAVE = """
    import sys
    import torch
    from fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=int(sys.argv[2]))
    fabric.launch()
    model = torch.nn.Linear(2, 2)
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters()))
    fabric.backward(model(torch.ones(1, 2)).sum())
    optimizer.step()
    fabric.save(sys.argv[1], {"model": model, "optimizer": optimizer})
    fabric.load(sys.argv[1], {"model": model, "optimizer": optimizer})
    fabric.print("saved and loaded")
"""


def _run_without_numpy(tmp_path: Path, devices: int) -> subprocess.CompletedProcess:
    """The save script with numpy unimportable in every process (a sitecustomize on PYTHONPATH: the
    launcher's children start from the environment too); test-only."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        'import sys\nsys.modules["numpy"] = None  # as if not installed\n'
    )
    script = tmp_path / "save.py"
    script.write_text(textwrap.dedent(_SAVE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt"), str(devices)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
        env=env,
    )


def test_numpy_is_declared_as_a_dependency() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"numpy\b", d) for d in dependencies), dependencies


@pytest.mark.timeout(180)
def test_without_numpy_one_process_saves_and_several_fail_inside_torch(tmp_path: Path) -> None:
    """Our own checkpoint path needs no numpy (its RNG state is captured only when numpy is there);
    torch's object collectives do: the reason numpy is declared. If torch ever stops needing it for
    them, the second half fails and the dependency can go."""
    (tmp_path / "one").mkdir()
    alone = _run_without_numpy(tmp_path / "one", devices=1)
    assert alone.returncode == 0, alone.stderr
    assert "saved and loaded" in alone.stdout
    (tmp_path / "two").mkdir()
    several = _run_without_numpy(tmp_path / "two", devices=2)
    assert several.returncode != 0
    assert "Numpy is not available" in several.stderr, several.stderr[-3000:]
