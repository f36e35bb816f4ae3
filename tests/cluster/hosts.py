"""Two "hosts" with addresses of their own on one machine: network namespaces joined by a veth pair.

Host 0 is 198.18.0.1 and host 1 is 198.18.0.2 (198.18.0.0/15 is reserved for such tests, RFC 2544).
Each namespace has its own loopback and one veth end; nothing routes outside the pair. The machine's
host name still resolves to 127.0.0.1 inside them (they share /etc/hosts), as on many real hosts:
exactly the setting where gloo, left alone, advertises loopback to its peer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence

ADDRESSES = ("198.18.0.1", "198.18.0.2")


class TwoHosts:
    """``create()``, then ``start(host, args)`` for processes inside a host; ``destroy()`` removes it all."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.namespaces = (f"fab{tag}a", f"fab{tag}b")
        self.interfaces = (f"fv{tag}a", f"fv{tag}b")  # at most 15 characters
        self._processes: list[subprocess.Popen] = []
        self._created: list[str] = []

    def create(self) -> None:
        for namespace in self.namespaces:
            _ip("netns", "add", namespace)
            self._created.append(namespace)
        _ip("link", "add", self.interfaces[0], "type", "veth", "peer", "name", self.interfaces[1])
        for namespace, interface, address in zip(self.namespaces, self.interfaces, ADDRESSES):
            _ip("link", "set", interface, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", interface)
            _ip("-n", namespace, "link", "set", interface, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def start(self, host: int, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[host], *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self._processes.append(process)
        return process

    def link(self, host: int, up: bool) -> None:
        """Take one host's end of the link down (or back up): its peer becomes unreachable."""
        state = "up" if up else "down"
        _ip("-n", self.namespaces[host], "link", "set", self.interfaces[host], state)

    def destroy(self) -> None:
        """Kill every process started here (whole sessions), then delete the namespaces (and so the link)."""
        for process in self._processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in self._processes:
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._processes.clear()
        for namespace in self._created:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self._created.clear()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.interfaces[0] in _ip("-o", "link", check=False):
            time.sleep(0.1)


def _ip(*args: str, check: bool = True) -> str:
    run = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and run.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {run.stderr.strip()}")
    return run.stdout
