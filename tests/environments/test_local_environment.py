from __future__ import annotations

import os

import pytest

from fabric.environments import LocalEnvironment


def test_defaults_on_a_single_machine() -> None:
    env = LocalEnvironment()
    assert LocalEnvironment.detect()
    assert not env.creates_processes_externally
    assert env.main_address == "127.0.0.1"
    assert env.world_size() == 1
    assert env.global_rank() == 0
    assert env.local_rank() == 0
    assert env.node_rank() == 0


def test_free_port_is_found_once_and_reading_it_writes_nothing() -> None:
    before = dict(os.environ)
    env = LocalEnvironment()
    port = env.main_port
    assert env.main_port == port  # found once: every reader in this process agrees
    # a getter never writes the process environment (the launcher hands the port to its children)
    assert dict(os.environ) == before
    env.teardown()  # the port is held until here: tests/environments/test_environment_ports.py
    assert dict(os.environ) == before


def test_teardown_keeps_a_port_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29511")
    env = LocalEnvironment()
    assert env.main_port == 29511
    env.teardown()
    assert os.environ["MASTER_PORT"] == "29511"


def test_teardown_removes_world_size_as_in_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's ``LightningEnvironment.teardown`` removes ``WORLD_SIZE`` (its test_lightning.py::test_teardown)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    LocalEnvironment().teardown()
    assert "WORLD_SIZE" not in os.environ
    LocalEnvironment().teardown()  # nothing to remove: no error


def test_child_started_by_fabric_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # What fabric's launcher sets in the second of 4 processes on node 1 of a hand-made 2-node job.
    for name, value in {
        "MASTER_ADDR": "10.1.2.3",
        "MASTER_PORT": "29500",
        "NODE_RANK": "1",
        "LOCAL_RANK": "1",
    }.items():
        monkeypatch.setenv(name, value)
    env = LocalEnvironment()
    env.set_world_size(8)
    env.set_global_rank(5)
    assert env.creates_processes_externally
    assert (env.main_address, env.main_port) == ("10.1.2.3", 29500)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 1)
    env.validate_settings(num_devices=4, num_nodes=2)


def test_setters_reject_impossible_values() -> None:
    env = LocalEnvironment()
    with pytest.raises(ValueError, match="world size must be at least 1, got 0"):
        env.set_world_size(0)
    with pytest.raises(ValueError, match="global rank must be 0 or more, got -1"):
        env.set_global_rank(-1)


def test_malformed_variable_names_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match=r"LOCAL_RANK='one' is not an integer"):
        LocalEnvironment().local_rank()
    monkeypatch.setenv("MASTER_PORT", "70000")
    with pytest.raises(ValueError, match=r"MASTER_PORT=70000 is not a TCP port"):
        _ = LocalEnvironment().main_port


def test_single_node_needs_no_variables() -> None:
    LocalEnvironment().validate_settings(num_devices=4, num_nodes=1)


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT", "NODE_RANK"])
def test_multi_node_needs_the_rendezvous_spelled_out(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    for name, value in {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29500", "NODE_RANK": "0"}.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"`num_nodes=2` needs the environment variable {missing}"):
        LocalEnvironment().validate_settings(num_devices=1, num_nodes=2)


def test_node_rank_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29500", "NODE_RANK": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"NODE_RANK=2 is out of range for `num_nodes=2`: expected 0 to 1"):
        LocalEnvironment().validate_settings(num_devices=1, num_nodes=2)
