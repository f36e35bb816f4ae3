#!/usr/bin/env python
"""A stand-in for SLURM's ``srun`` on PATH: ``srun [--ntasks=N] COMMAND...``.

Starts N tasks of COMMAND with the variables SLURM sets for each (``SLURM_PROCID``, ``SLURM_LOCALID``,
``SLURM_NODEID``, ``SLURM_NTASKS``), forwards SIGUSR1/SIGTERM/SIGINT to every task as srun does, and
exits with the first non-zero exit code of a task (srun's rule), killing the rest when one fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

args = sys.argv[1:]
ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option.startswith("--ntasks="):
        ntasks = int(option.split("=", 1)[1])
tasks = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0")
    env["SLURM_NTASKS"] = str(ntasks)
    tasks.append(subprocess.Popen(args, env=env))


def forward(signum: int, frame: object) -> None:
    for task in tasks:
        if task.poll() is None:
            task.send_signal(signum)


for name in ("SIGUSR1", "SIGTERM", "SIGINT"):
    signal.signal(getattr(signal, name), forward)
code = 0
while any(task.poll() is None for task in tasks):
    failed = [task.returncode for task in tasks if task.returncode not in (None, 0)]
    if failed and code == 0:
        code = failed[0]
        for task in tasks:
            if task.poll() is None:
                task.kill()
    time.sleep(0.05)
code = code or next((task.returncode for task in tasks if task.returncode), 0)
sys.exit(code if code >= 0 else 128 - code)
