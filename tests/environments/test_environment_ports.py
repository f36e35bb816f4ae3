from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from fabric.environments import find_free_network_port
from fabric.environments._ports import port_from_job_id


def test_free_port_is_bindable() -> None:
    port = find_free_network_port()
    assert 1 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


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
