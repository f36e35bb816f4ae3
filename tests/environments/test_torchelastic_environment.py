from __future__ import annotations

import re

import pytest

from fabric.environments import TorchElasticEnvironment

# Worker 2 on the second node of
# `torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=node001:29500 train.py`.
TORCHRUN_ENV = {
    "LOCAL_RANK": "2",
    "RANK": "6",
    "GROUP_RANK": "1",
    "ROLE_RANK": "6",
    "ROLE_NAME": "default",
    "LOCAL_WORLD_SIZE": "4",
    "WORLD_SIZE": "8",
    "GROUP_WORLD_SIZE": "2",
    "ROLE_WORLD_SIZE": "8",
    "MASTER_ADDR": "node001",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_MAX_RESTARTS": "0",
    "TORCHELASTIC_RUN_ID": "3f1e9a2c",
    "TORCHELASTIC_USE_AGENT_STORE": "False",
    "TORCHELASTIC_ERROR_FILE": "/tmp/torchelastic_k2j1/3f1e9a2c_abc/attempt_0/2/error.json",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture
def torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("torchrun")
def test_reads_torchrun_variables() -> None:
    env = TorchElasticEnvironment()
    assert TorchElasticEnvironment.detect()
    assert env.creates_processes_externally
    assert (env.main_address, env.main_port) == ("node001", 29500)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 6, 2, 1)
    env.validate_settings(num_devices=4, num_nodes=2)


def test_not_detected_without_torchrun() -> None:
    assert not TorchElasticEnvironment.detect()


def test_detected_from_the_run_id_alone(torchrun: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``torch.distributed.is_torchelastic_launched()`` and Lightning decide."""
    for name in ("GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name)
    assert TorchElasticEnvironment.detect()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert not TorchElasticEnvironment.detect()  # a stray RANK or WORLD_SIZE in a shell is not torchrun


@pytest.mark.usefixtures("torchrun")
def test_setters_accept_torchrun_values_and_refuse_others() -> None:
    env = TorchElasticEnvironment()
    env.set_world_size(8)
    env.set_global_rank(6)
    env.set_world_size(4)  # other values are ignored too, as in Lightning: torchrun fixed them
    env.set_global_rank(0)
    assert (env.world_size(), env.global_rank()) == (8, 6)


@pytest.mark.usefixtures("torchrun")
def test_devices_must_match_nproc_per_node() -> None:
    with pytest.raises(
        ValueError,
        match=r"`devices=2` does not match .* LOCAL_WORLD_SIZE=4 means devices=4.*`--nproc-per-node=2`",
    ):
        TorchElasticEnvironment().validate_settings(num_devices=2, num_nodes=2)


@pytest.mark.usefixtures("torchrun")
def test_num_nodes_must_match_nnodes() -> None:
    with pytest.raises(ValueError, match=r"`num_nodes=1` does not match .* means num_nodes=2.*`--nnodes=1`"):
        TorchElasticEnvironment().validate_settings(num_devices=4, num_nodes=1)


def test_without_local_world_size_the_product_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-made launch with ``WORLD_SIZE`` only: Lightning's product check, with its wording."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    env = TorchElasticEnvironment()
    env.validate_settings(num_devices=4, num_nodes=2)
    with pytest.raises(ValueError, match=re.escape("the product (2 * 2) does not match the world size (8)")):
        env.validate_settings(num_devices=2, num_nodes=2)
