"""Run by tests/launchers/test_port_race.py: report whether the rendezvous port is held, then meet the others.

``port_race_target.py MODE``, MODE one of ``run`` (started by `fabric run`), ``script`` (``python
port_race_target.py script``: ``Fabric(devices=2)`` starts rank 1 by re-running this script) and
``spawn`` (``ddp_spawn``). Under ``run``, each worker first tries a plain ``bind`` to ``MASTER_PORT``,
before any store exists, and prints ``port held`` or ``port free``. Then the ranks all-reduce a one and
print the sum.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

import torch

from fabric import Fabric


def port_state(port: int) -> str:
    """``held`` when another socket owns ``port`` on 127.0.0.1 (a plain bind is refused), else ``free``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            return "held"
    return "free"


def meet(fabric: Fabric) -> None:
    total = fabric.all_reduce(torch.ones(1), reduce_op="sum")
    print(f"rank {fabric.global_rank} sum {total.item():g}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "run":
        print(f"rank {os.environ['RANK']} port {port_state(int(os.environ['MASTER_PORT']))}", flush=True)
        fabric = Fabric()
    else:
        fabric = Fabric(accelerator="cpu", strategy="ddp_spawn" if mode == "spawn" else "ddp", devices=2)
    if mode == "spawn":
        fabric.launch(meet)
    else:
        fabric.launch()
        meet(fabric)
