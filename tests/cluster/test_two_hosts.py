"""``fabric run`` across two hosts with addresses of their own (network namespaces, 198.18.0.1 and .2).

Nothing is set by the user: the host name resolves to 127.0.0.1 in both namespaces, so before fabric
chose gloo's interface itself node 0 failed with ``Gloo connectFullMesh failed ... Connection refused,
remote=[127.0.0.1]`` while node 1 waited until it was killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.hosts import ADDRESSES, TwoHosts
from tests.cluster.test_slurm import TRAIN, loaded_weights, local_reference

#: any port: each namespace is fresh, with a port space of its own
PORT = 29500


@pytest.fixture
def hosts(ip_command: str) -> Iterator[TwoHosts]:
    two = TwoHosts()
    try:
        two.create()
        yield two
    finally:
        two.destroy()
    assert not any(name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
                   for name in two.namespaces)  # fmt: skip


def _fabric_run(
    hosts: TwoHosts, node: int, port: int, out: Path, *extra: str, script_args: tuple = ()
) -> subprocess.Popen:
    env = {
        k: v for k, v in os.environ.items() if k not in ("GLOO_SOCKET_IFNAME", "MASTER_ADDR", "MASTER_PORT")
    }
    args = [
        sys.executable, "-m", "fabric.cli", "run", "--accelerator", "cpu", "--devices", "1", "--num-nodes", "2",
        "--node-rank", str(node), "--main-address", ADDRESSES[0], "--main-port", str(port), *extra,
        str(TRAIN), str(out), "--num-nodes", "2", "--devices", "1", *script_args,
    ]  # fmt: skip
    return hosts.start(node, args, dict(env, OMP_NUM_THREADS="1"))


def _finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"node did not end within {timeout} s") from None


@pytest.mark.timeout(400)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_hosts_train_with_nothing_set(hosts: TwoHosts, tmp_path: Path, strategy: str) -> None:
    """Each node's gloo uses its own veth (found from the route to 198.18.0.1); the weights equal two
    local processes', bit for bit; FSDP writes one sharded checkpoint with a shard from each host."""
    out = tmp_path / "run"
    port = PORT
    nodes = [_fabric_run(hosts, node, port, out, script_args=("--strategy", strategy)) for node in (0, 1)]
    outputs = [_finish(node, 300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    results = [json.loads((out / f"result{rank}-0.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["node"], r["world_size"]) for r in results] == [(0, 0, 2), (1, 1, 2)]
    assert [r["gloo_interface"] for r in results] == list(hosts.interfaces)
    if strategy == "fsdp":
        shards = sorted(p.name for p in (out / "final.ckpt").glob("*.distcp"))
        assert shards == ["__0_0.distcp", "__1_0.distcp"]
    assert loaded_weights(out) == local_reference(tmp_path / "local", 2, ["--strategy", strategy])


@pytest.mark.timeout(200)
@pytest.mark.parametrize("present", [0, 1])
def test_a_node_that_never_joins_is_named_within_the_join_timeout(
    hosts: TwoHosts, tmp_path: Path, present: int
) -> None:
    start = time.monotonic()
    node = _fabric_run(hosts, present, PORT, tmp_path, "--join-timeout", "20")
    output = _finish(node, 150)
    took = time.monotonic() - start
    assert node.returncode != 0, output
    if present == 0:
        assert "node rank 0 waited 20 s (--join-timeout) at 198.18.0.1:" in output, output
        assert "node rank 1 did not join" in output
    else:
        assert "node rank 1 could not meet node rank 0 at 198.18.0.1:" in output, output
    assert took < 120, output  # 20 s of waiting plus start-up on a loaded machine
