"""Run by tests/launchers/test_direct.py under `fabric run` (or torchrun, for comparison).

``direct_target.py OUT MODE``: every rank writes its pid and environment to OUT, then acts by MODE:
``env`` ends at once; ``fail`` makes rank 1 exit with code 3 while rank 0 sleeps; ``sigkill`` makes
rank 1 kill itself; ``signal`` waits for SIGUSR1 or SIGTERM (forwarded by the launcher) and records
it; ``sleep`` sleeps; ``dist`` runs a plain `init_process_group` + `all_reduce`, as a torchrun script does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ["RANK"])
received: list[int] = []
if mode == "signal":
    for signum in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: received.append(number))
(out / f"env{rank}.json").write_text(json.dumps(dict(os.environ)))
(out / f"pid{rank}.tmp").write_text(str(os.getpid()))
os.replace(out / f"pid{rank}.tmp", out / f"pid{rank}")  # never seen half-written

if mode in ("fail", "sigkill") and rank == 1:
    while not (out / "pid0").exists():  # fail only once rank 0 is up, so that it has to be stopped
        time.sleep(0.02)
if mode == "fail" and rank == 1:
    sys.exit(3)
if mode == "sigkill" and rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
if mode in ("fail", "sigkill", "sleep"):
    time.sleep(120)
if mode == "signal":
    deadline = time.monotonic() + 120
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    (out / f"signal{rank}").write_text(signal.Signals(received[0]).name if received else "none")
if mode == "dist":
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    (out / f"sum{rank}").write_text(str(total.item()))
    dist.destroy_process_group()
