"""Which network interface gloo uses across hosts when the host name resolves to loopback.

gloo picks its address from the host name: it resolves ``gethostname()`` and binds to the first address
that works. On many Debian/Ubuntu hosts and in most containers the host name resolves to ``127.0.0.1``
or ``127.0.1.1``, so gloo advertises loopback to the other hosts, and the run fails with
``Gloo connectFullMesh failed ... Connection refused, remote=[127.0.0.1]:...`` on one node while the
other waits for its timeout. ``GLOO_SOCKET_IFNAME`` fixes it; this module finds the value the user would
set: the interface that carries this host's route to the main address.

Only when it matters: the user did not set ``GLOO_SOCKET_IFNAME``, the back end uses gloo, the main
address is not loopback (several hosts) and the host name gives gloo nothing but loopback.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

VARIABLE = "GLOO_SOCKET_IFNAME"
_SIOCGIFADDR = 0x8915  # <linux/sockios.h>: the IPv4 address of an interface


def gloo_interface(main_address: str, backend: str) -> str | None:
    """The interface gloo should use to reach ``main_address``, or None when gloo's own choice works.

    Raises ``RuntimeError`` naming ``GLOO_SOCKET_IFNAME`` when gloo would pick loopback for a run across
    hosts and no interface on the route to the main address can be found.

    Example::

        >>> gloo_interface("127.0.0.1", "gloo") is None  # one host: loopback is right
        True
    """
    if "gloo" not in backend or os.environ.get(VARIABLE):
        return None
    main_ips = _resolve(main_address)
    if not main_ips or any(ip.is_loopback for ip in main_ips):
        # unresolvable: the rendezvous reports it; loopback: every process is on this host
        return None
    if not all(ip.is_loopback for ip in _resolve(socket.gethostname())):
        return None  # gloo's choice from the host name is an address others can reach
    main_ip = main_ips[0]
    local_ip = _local_address_towards(main_ip)
    name = _interface_with_address(local_ip) if local_ip is not None else None
    if name is None or name == "lo":
        raise RuntimeError(
            f"This host's name ({socket.gethostname()!r}) resolves to loopback, so gloo would advertise "
            f"127.0.0.1 to the other nodes, and no network interface on the route to the main address "
            f"{main_address!r} ({main_ip}) was found (local address: {local_ip}). Set {VARIABLE} to the "
            f"interface that reaches the other nodes (see `ip -o addr`), e.g. `export {VARIABLE}=eth0`, or "
            f"make the host name resolve to this host's network address in /etc/hosts."
        )
    return name


def set_gloo_interface(main_address: str, backend: str) -> str | None:
    """Put :func:`gloo_interface`'s choice in ``os.environ`` (read by gloo when the group is created).

    Returns the value set, or None when nothing was set.
    """
    name = gloo_interface(main_address, backend)
    if name is not None:
        os.environ[VARIABLE] = name
    return name


def address_towards(main_address: str) -> str | None:
    """This host's address on the route to ``main_address`` (the one its peers reach it at), or None.

    Names this node in hang reports: when a node's link goes down, the other nodes can say which
    address they lost. Sends nothing (see :func:`_local_address_towards`).
    """
    main_ips = _resolve(main_address)
    return _local_address_towards(main_ips[0]) if main_ips else None


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _local_address_towards(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The source address the kernel picks for packets to ``ip`` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ip), 9))
            return str(probe.getsockname()[0]).split("%")[0]
    except OSError:
        return None


def _interface_with_address(address: str) -> str | None:
    """The name of the interface that holds ``address`` (IPv4 through ioctl, IPv6 from /proc)."""
    wanted = ipaddress.ip_address(address)
    if wanted.version == 6:
        return _ipv6_interface(wanted)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            if ipaddress.ip_address(socket.inet_ntoa(answer[20:24])) == wanted:
                return name
    return None


def _ipv6_interface(wanted: ipaddress.IPv6Address) -> str | None:
    try:
        with open("/proc/net/if_inet6") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 6 and ipaddress.IPv6Address(int(fields[0], 16)) == wanted:
                    return fields[5]
    except OSError:
        pass
    return None
