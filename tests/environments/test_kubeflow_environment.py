from __future__ import annotations

import pytest

from fabric.environments import KubeflowEnvironment

# Pod "job-worker-1" of a PyTorchJob with one master and two workers (3 pods).
PYTORCHJOB_ENV = {
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "MASTER_ADDR": "job-master-0",
    "MASTER_PORT": "23456",
    "WORLD_SIZE": "3",
    "RANK": "2",
    "PYTHONUNBUFFERED": "1",
}


@pytest.fixture
def pytorchjob(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PYTORCHJOB_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("pytorchjob")
def test_one_process_per_pod() -> None:
    env = KubeflowEnvironment()
    assert env.creates_processes_externally
    assert (env.main_address, env.main_port) == ("job-master-0", 23456)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (3, 2, 0, 2)
    env.set_world_size(3)
    env.set_global_rank(2)
    env.validate_settings(num_devices=1, num_nodes=3)


@pytest.mark.usefixtures("pytorchjob")
def test_detect_raises_as_in_lightning() -> None:
    """Lightning's ``detect()`` raises even inside a PyTorchJob: its variables are torchrun's too."""
    with pytest.raises(
        NotImplementedError, match=r"can't be detected automatically.*plugins=\[KubeflowEnvironment"
    ):
        KubeflowEnvironment.detect()


@pytest.mark.usefixtures("pytorchjob")
def test_validate_settings_errors() -> None:
    env = KubeflowEnvironment()
    with pytest.raises(ValueError, match=r"`devices=2` does not match .* devices=1.*Worker.replicas"):
        env.validate_settings(num_devices=2, num_nodes=3)
    with pytest.raises(ValueError, match=r"`num_nodes=2` does not match .* WORLD_SIZE=3"):
        env.validate_settings(num_devices=1, num_nodes=2)
    env.set_world_size(6)  # ignored, as in Lightning: the operator fixed it
    assert env.world_size() == 3


def test_missing_variable_names_it() -> None:
    with pytest.raises(RuntimeError, match="The environment variable MASTER_ADDR is not set"):
        _ = KubeflowEnvironment().main_address
