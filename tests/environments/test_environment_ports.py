from __future__ import annotations

import copy
import errno
import socket
from datetime import timedelta

import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

from fabric.environments import LocalEnvironment, find_free_network_port
from fabric.environments._ports import port_from_job_id, reserve_free_port


def test_free_port_is_bindable() -> None:
    port = find_free_network_port()
    assert 1 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def _plain_bind_refused(port: int) -> bool:
    """Whether a program binding ``port`` the ordinary way (no SO_REUSEADDR) is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            assert error.errno == errno.EADDRINUSE
            return True
    return False


def test_a_reserved_port_is_refused_to_others_and_given_to_the_store() -> None:
    with reserve_free_port() as reservation:
        port = reservation.getsockname()[1]
        assert _plain_bind_refused(port)
        # torch's store binds it all the same (SO_REUSEADDR on both sides), and serves clients
        server = dist.TCPStore("127.0.0.1", port, 2, True, timedelta(seconds=30), wait_for_workers=False)
        client = dist.TCPStore("127.0.0.1", port, 2, False, timedelta(seconds=30))
        client.set("key", "value")
        assert server.get("key") == b"value"
        del client, server
    assert not _plain_bind_refused(port)


def test_the_local_environment_holds_the_port_it_chose_until_teardown() -> None:
    environment = LocalEnvironment()
    port = environment.main_port
    assert environment.main_port == port  # chosen once
    assert _plain_bind_refused(port)
    assert copy.deepcopy(environment).main_port == port  # a copy knows the port, without a second socket
    environment.teardown()
    assert not _plain_bind_refused(port)


def test_port_from_job_id_uses_last_four_digits() -> None:
    assert port_from_job_id("4242317") == 15000 + 2317
    assert port_from_job_id("12") == 15012
    assert port_from_job_id("1234567_3") == 15000 + 5673  # digits only, an array-style id
    assert 15000 <= port_from_job_id("\u00b2") < 25000  # "²" passes str.isdigit but is no digit for int()


@given(st.text(max_size=30))
def test_port_from_any_job_id_is_stable_and_valid(job_id: str) -> None:
    port = port_from_job_id(job_id)
    assert port == port_from_job_id(job_id)
    assert 15000 <= port < 25000
