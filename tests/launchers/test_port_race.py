"""The rendezvous port: held from the moment fabric chooses it, and a clear, fast error when it is taken.

Fabric chooses the port before the processes start and rank 0's store binds it seconds later, after
importing torch. A port given back in between can be taken by another program; then rank 0 failed with
torch's bare "address already in use", or, when that program was another job's rendezvous, the two jobs
mixed. Real processes on 127.0.0.1; the program holding the port is a real listening socket in another
process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.strategies.multiprocess import launch_env, run_python

TARGET = Path(__file__).parents[1] / "scripts" / "port_race_target.py"
_LISTENER = (
    "import socket, sys, time\n"
    "sock = socket.socket()\n"
    "sock.bind(('127.0.0.1', 0))\n"
    "sock.listen(16)\n"
    "print(sock.getsockname()[1], flush=True)\n"
    "time.sleep(300)\n"
)
_RUN = ["-m", "fabric.cli", "run", "--accelerator", "cpu", "--devices", "2"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on (and accepts nothing) for the whole test."""
    listener = subprocess.Popen([sys.executable, "-c", _LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        yield int(listener.stdout.readline())
    finally:
        listener.kill()
        listener.wait()


def _command(mode: str, port: int | None = None) -> list[str]:
    if mode == "run":
        main_port = [] if port is None else ["--main-port", str(port)]
        return [*_RUN, *main_port, str(TARGET), "run"]
    return [str(TARGET), mode]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["run", "script", "spawn"])
def test_a_taken_port_fails_at_once_and_says_how_to_pick_another(mode: str, taken_port: int) -> None:
    env = launch_env(MASTER_PORT=str(taken_port))
    run = run_python(_command(mode, taken_port), env=env, timeout=120)
    assert run.returncode != 0, run.output
    assert f"another program is already listening on port {taken_port}" in run.output, run.output
    assert "--main-port" in run.output and "MASTER_PORT=PORT" in run.output
    assert "sum" not in run.output  # nobody met anybody


@pytest.mark.timeout(180)
def test_fabric_run_holds_the_port_it_chose_until_rank_0_binds_it() -> None:
    env = launch_env()
    env.pop("MASTER_PORT")  # `fabric run` chooses one
    run = run_python(_command("run"), env=env, timeout=120)
    assert run.returncode == 0, run.output
    # rank 0 checks before any store exists: only the launcher can be holding the port
    assert "rank 0 port held" in run.output, run.output
    assert "rank 0 sum 2" in run.output and "rank 1 sum 2" in run.output, run.output


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["script", "spawn"])
def test_a_launch_on_the_port_fabric_holds_meets(mode: str) -> None:
    """Rank 0's store binds the port that the launching process (rank 0 itself, or the parent) holds."""
    env = launch_env()
    env.pop("MASTER_PORT")  # fabric chooses and holds one
    run = run_python(_command(mode), env=env, timeout=120)
    assert run.returncode == 0, run.output
    assert "rank 0 sum 2" in run.output and "rank 1 sum 2" in run.output, run.output
