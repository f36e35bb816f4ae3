"""Run a script and its conversion as real processes (plain python, or torchrun with gloo) and compare."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fabric.environments import find_free_network_port
from tests.torch_exit_abort import aborted_at_exit_by_torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).parent / "scripts"


def skip_unless_scripts_run() -> None:
    """Skip the rest of a test that runs scripts as processes, unless this is `nox -s examples`.

    Each such run imports torch in fresh processes (5-30 s a test, about 2 minutes for the folder), so
    they run with the examples (``FABRIC_RUN_EXAMPLES=1``), and the default suite keeps its 15-minute
    budget; what a test checks before its first run (the conversion itself) still runs there.
    """
    if os.environ.get("FABRIC_RUN_EXAMPLES") != "1":
        pytest.skip("runs scripts as processes: `nox -s examples` (or set FABRIC_RUN_EXAMPLES=1)")


def env() -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "GROUP_", "FABRIC_", "PL_", "TORCHELASTIC")
        )
    }
    clean["OMP_NUM_THREADS"] = "1"
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    return clean


def _files(folder: Path) -> dict[Path, bytes]:
    """The files directly in ``folder`` (a test program's small working folder), with their bytes."""
    return {path: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def _restore(folder: Path, files: dict[Path, bytes]) -> None:
    """Put ``folder``'s files back as :func:`_files` saw them: written ones rewritten, new ones removed."""
    for path in folder.iterdir():
        if path.is_file() and path not in files:
            path.unlink()
    for path, content in files.items():
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)


def run(
    script: Path,
    *args: str,
    nproc: int = 1,
    cwd: Path | None = None,
    reference: bool = False,
    launcher: str = "torchrun",
) -> list[str]:
    """Run ``script`` on ``nproc`` processes and return its stdout lines; fail on errors.

    ``launcher``: ``"torchrun"`` (one process runs under plain ``python``), ``"torchrun1"`` (one process
    under torchrun too, for a script that reads its variables) or ``"fabric"`` (``fabric run
    --accelerator cpu --devices N``, fabric's own launcher).
    A ``reference`` run (the original script, plain torch) is repeated once if torch aborted it at exit
    (see ``tests/torch_exit_abort.py``); a converted script never is.
    """
    skip_unless_scripts_run()
    if launcher == "fabric":
        command = [
            sys.executable, "-m", "fabric.cli", "run", "--accelerator", "cpu", f"--devices={nproc}",
            f"--main-port={find_free_network_port()}", str(script), *args,
        ]  # fmt: skip
    elif nproc == 1 and launcher != "torchrun1":
        command = [sys.executable, str(script), *args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            "--master-addr=127.0.0.1", f"--master-port={find_free_network_port()}", "--", str(script), *args,
        ]  # fmt: skip
    workdir = cwd or script.parent
    # a repeated reference run must start from the files the first attempt started from: a script that
    # resumes from its snapshot would otherwise resume from the one the aborted attempt wrote
    before = _files(workdir) if reference else {}
    for attempt in range(2 if reference else 1):
        if attempt:
            _restore(workdir, before)
        result = subprocess.run(command, cwd=workdir, env=env(), capture_output=True, text=True, timeout=240)
        if not aborted_at_exit_by_torch(result.returncode, result.stdout + result.stderr):
            break
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    if nproc == 1 and launcher == "torchrun":
        return result.stdout.splitlines()
    # torchrun runs Python unbuffered: a print's text and its newline are two writes, so the ranks'
    # lines can come out as "...0.1234epoch 1 ...\n\n". Each text is written whole: split the records
    # again where a number runs into the next record's first word, and drop the empty lines.
    return [
        part for line in result.stdout.splitlines() for part in re.split(r"(?<=\d)(?=[a-z])", line) if part
    ]


def run_both(
    first: tuple, second: tuple, nproc: int = 1, cwds: tuple[Path | None, Path | None] = (None, None)
) -> tuple[list[str], list[str]]:
    """``run`` two scripts at the same time (the machine has cores to spare while one imports torch).

    The second is the reference (the original script).
    """
    skip_unless_scripts_run()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(run, *first, nproc=nproc, cwd=cwds[0])
        b = pool.submit(run, *second, nproc=nproc, cwd=cwds[1], reference=True)
        return a.result(), b.result()
