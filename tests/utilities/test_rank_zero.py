"""The rank-zero helpers: right rank, and ``lightning_utilities`` kept off the path to the first step."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_set_global_rank_does_not_import_lightning_utilities_and_messages_follow_the_rank() -> None:
    done = _run(
        """
        import sys, warnings
        from fabric.utilities import rank_zero

        rank_zero.set_global_rank(1)
        assert "lightning_utilities" not in sys.modules, "set_global_rank imported lightning_utilities"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rank_zero.rank_zero_warn("from rank 1")
            rank_zero.set_global_rank(0)
            rank_zero.rank_zero_warn("from rank 0")
        assert [str(w.message) for w in caught] == ["from rank 0"], [str(w.message) for w in caught]
        from lightning_utilities.core.rank_zero import rank_zero_only

        assert rank_zero_only.rank == 0
        rank_zero.set_global_rank(3)  # already imported: kept in step
        assert rank_zero_only.rank == 3
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
