"""Which interface gloo gets across hosts when the host name resolves to loopback (fabric/strategies/gloo_interface.py).

The choice is checked against this machine's real interfaces (as `ip -o addr` lists them); the end-to-end
run across two network namespaces is in tests/cluster/test_two_hosts.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from fabric.strategies.gloo_interface import VARIABLE, address_towards, gloo_interface, set_gloo_interface


def _addresses(version: str) -> list[tuple[str, str]]:
    """(interface, address) of every global address of this machine, from `ip -o addr` (iproute2)."""
    if shutil.which("ip") is None:
        pytest.skip("needs `ip` (iproute2) to list this machine's addresses independently")
    lines = subprocess.run(["ip", "-o", f"-{version}", "addr"], capture_output=True, text=True).stdout
    found = []
    for line in lines.splitlines():
        fields = line.split()
        if "scope" in fields and fields[fields.index("scope") + 1] == "global":
            found.append((fields[1], fields[3].split("/")[0]))
    if not found:
        pytest.skip(f"this machine has no global IPv{version} address besides loopback")
    return found


@pytest.fixture(autouse=True)
def no_user_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)


@pytest.fixture
def hostname_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host name as on many Debian hosts and containers: it resolves to 127.0.0.1."""
    monkeypatch.setattr("socket.gethostname", lambda: "localhost")


@pytest.mark.usefixtures("hostname_is_loopback")
@pytest.mark.parametrize("version", ["4", "6"])
def test_the_interface_that_holds_the_route_to_the_main_address(version: str) -> None:
    for interface, address in _addresses(version):
        assert gloo_interface(address, "gloo") == interface
        assert gloo_interface(address, "cpu:gloo,cuda:nccl") == interface


@pytest.mark.usefixtures("hostname_is_loopback")
def test_set_puts_it_in_the_environment_only_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    interface, address = _addresses("4")[0]
    assert set_gloo_interface("127.0.0.1", "gloo") is None and VARIABLE not in os.environ
    assert set_gloo_interface(address, "gloo") == interface
    assert os.environ[VARIABLE] == interface


@pytest.mark.usefixtures("hostname_is_loopback")
def test_nothing_to_do_on_one_host_for_nccl_or_when_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    _, address = _addresses("4")[0]
    assert gloo_interface("127.0.0.1", "gloo") is None  # every process on this host
    assert gloo_interface("localhost", "gloo") is None
    assert gloo_interface(address, "nccl") is None  # gloo is not used
    assert gloo_interface("no-such-host.invalid", "gloo") is None  # the rendezvous reports it
    monkeypatch.setenv(VARIABLE, "eth7")
    assert gloo_interface(address, "gloo") is None  # the user's choice stands


def test_nothing_to_do_when_the_host_name_resolves_to_a_network_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, address = _addresses("4")[0]
    monkeypatch.setattr("socket.gethostname", lambda: address)
    assert gloo_interface(address, "gloo") is None


_NO_ROUTE = """
import socket
socket.gethostname = lambda: "localhost"
from fabric.strategies.gloo_interface import gloo_interface
try:
    gloo_interface("198.18.0.1", "gloo")
except RuntimeError as err:
    print(err)
"""


@pytest.mark.timeout(60)
def test_without_a_route_the_error_says_which_variable_to_set() -> None:
    """In a network namespace of its own (only a loopback that is down) nothing reaches 198.18.0.1."""
    if shutil.which("unshare") is None:
        pytest.skip("needs `unshare` (util-linux) for a network namespace")
    run = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", _NO_ROUTE], capture_output=True, text=True, timeout=50
    )
    if run.returncode != 0 and "Operation not permitted" in run.stderr:
        pytest.skip("creating a network namespace needs root (CAP_SYS_ADMIN)")
    assert run.returncode == 0, run.stderr
    assert "resolves to loopback" in run.stdout
    assert "main address '198.18.0.1'" in run.stdout
    assert f"Set {VARIABLE} to the interface" in run.stdout


def test_the_address_that_names_this_node_in_hang_reports() -> None:
    """The source address of the route to the main address: each of this machine's own addresses routes to
    itself (as the first node's does), loopback to loopback; an unresolvable name gives None."""
    assert address_towards("127.0.0.1") == "127.0.0.1"
    assert address_towards("no-such-host.invalid") is None
    for _, address in _addresses("4"):  # skips where this machine has no address besides loopback
        assert address_towards(address) == address
