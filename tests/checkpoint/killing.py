"""Killing a rank in the middle of a checkpoint write, for the tests of what a killed save leaves behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


class KillDuringWrite(threading.Thread):
    """SIGKILL rank 1 once checkpoint A is saved and rank 1's part of B has started to hit the disk.

    ``part`` is a glob, relative to the output directory, for rank 1's file of B (default: its DCP shard).
    """

    def __init__(self, out_dir: Path, part: str = ".checkpoint.tmp-*/__1_*.distcp") -> None:
        super().__init__(daemon=True)
        self.out_dir = out_dir
        self.part = part
        self.stop = threading.Event()
        self.killed_at_bytes: int | None = None

    def run(self) -> None:
        pid_file, saved = self.out_dir / "rank1.pid", self.out_dir / "A_saved"
        while not self.stop.is_set():
            if saved.exists() and pid_file.exists():
                for shard in self.out_dir.glob(self.part):
                    try:
                        size = shard.stat().st_size
                    except FileNotFoundError:
                        continue
                    if size > 0:
                        os.kill(int(pid_file.read_text()), signal.SIGKILL)
                        self.killed_at_bytes = size
                        return
            time.sleep(0.001)
