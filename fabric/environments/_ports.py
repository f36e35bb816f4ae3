"""Ports for the rendezvous: a free one found now, or one derived from a scheduler's job id."""

from __future__ import annotations

import socket
import zlib

# Derived ports land in [15000, 25000): above the well-known and common service ports, below the
# Linux ephemeral range (32768+), where the kernel would hand them to outgoing connections.
_JOB_PORT_BASE = 15000
_JOB_PORT_SPAN = 10000


def find_free_network_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that nothing is listening on at ``host`` right now.

    The OS picks the port (bind to port 0), so two callers never race over a guessed number. Another
    process may still take the port between this call and the rendezvous; callers find it once and
    share the number (for example through ``MASTER_PORT``) instead of calling again.

    Example::

        port = find_free_network_port()  # e.g. 43817
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def port_from_job_id(job_id: str) -> int:
    """Return a port every task of a job computes alike, from the scheduler's job id alone.

    Schedulers start all tasks at once with no channel between them before the rendezvous, so the
    port must follow from a value they all see. The last four digits of the job id make concurrent
    jobs sharing a node unlikely to collide; a job id without digits falls back to a checksum.
    """
    digits = "".join(ch for ch in job_id if ch in "0123456789")
    offset = int(digits[-4:]) if digits else zlib.crc32(job_id.encode()) % _JOB_PORT_SPAN
    return _JOB_PORT_BASE + offset
