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
    process may still take the port between this call and the rendezvous (a launcher that starts the
    rendezvous later uses :func:`reserve_free_port`); callers find it once and share the number (for
    example through ``MASTER_PORT``) instead of calling again.

    Example::

        port = find_free_network_port()  # e.g. 43817
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def reserve_free_port(host: str = "127.0.0.1") -> socket.socket:
    """Return a socket bound to a free TCP port at ``host``; the port stays taken while it is open.

    :func:`find_free_network_port` gives the number back to the OS, and in the seconds until rank 0's
    store binds it (the processes still import torch) another process's ``bind`` may take it: rank 0
    then fails with "address already in use", or, when that process is another job's rendezvous, the
    two jobs mix. This socket closes that gap: it never listens and sets ``SO_REUSEADDR``, so the OS
    hands the port to no other ``bind(0)`` and refuses a plain ``bind`` to it, while rank 0's store
    (torch's ``TCPStore`` sets ``SO_REUSEADDR`` too) binds and listens on it as usual, in this process
    or another. The launcher holds it until the run ends (or the environment is torn down).

    Example::

        reservation = reserve_free_port()
        port = reservation.getsockname()[1]  # give `port` to the processes; close `reservation` at the end
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def port_from_job_id(job_id: str) -> int:
    """Return a port every task of a job computes alike, from the scheduler's job id alone.

    Schedulers start all tasks at once with no channel between them before the rendezvous, so the
    port must follow from a value they all see. The last four digits of the job id make concurrent
    jobs sharing a node unlikely to collide; a job id without digits falls back to a checksum.
    """
    digits = "".join(ch for ch in job_id if ch in "0123456789")
    offset = int(digits[-4:]) if digits else zlib.crc32(job_id.encode()) % _JOB_PORT_SPAN
    return _JOB_PORT_BASE + offset
