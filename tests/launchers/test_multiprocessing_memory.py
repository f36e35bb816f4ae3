"""``ddp_spawn`` gives each process its own copy of a model passed to ``fabric.launch(fn, model)``.

``spawn`` passes CPU tensors through shared memory; without a copy all processes write into one set of
weights (Lightning's ``test_memory_sharing_disabled[ddp_spawn]`` pins the same behaviour).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.strategies.multiprocess import SCRIPTS, run_python

pytestmark = pytest.mark.timeout(120)


def test_spawned_processes_do_not_share_the_model_memory(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = run_python([str(SCRIPTS / "launch_shared_model.py"), str(out)], timeout=110)
    assert run.returncode == 0, run.output
    result = json.loads(out.read_text())
    assert result == {
        "own_weights": True,  # rank 1's write did not reach rank 0
        "own_buffer": True,
        "weight_shared": False,
        "buffer_shared": False,
        "still_tied": True,
        "tensor_shared": True,  # a plain tensor argument stays shared, as in Lightning
    }
