from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric.environments import SLURMEnvironment, expand_slurm_nodelist

# Task 3 of 4 (second task on the second node) of
#   #SBATCH --job-name=train --nodes=2 --ntasks-per-node=2 --gres=gpu:2
#   srun python train.py
SRUN_ENV = {
    "SLURM_CLUSTER_NAME": "cluster",
    "SLURM_SUBMIT_DIR": "/home/alice/project",
    "SLURM_SUBMIT_HOST": "login01",
    "SLURM_JOB_ID": "4242317",
    "SLURM_JOBID": "4242317",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_NODELIST": "node[001-002]",
    "SLURM_NODELIST": "node[001-002]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_JOB_CPUS_PER_NODE": "16(x2)",
    "SLURM_NTASKS": "4",
    "SLURM_NPROCS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_GTIDS": "2,3",
    "SLURM_TOPOLOGY_ADDR": "node002",
    "SLURMD_NODENAME": "node002",
    "SLURM_CPUS_ON_NODE": "16",
    "SLURM_JOB_GPUS": "0,1",
    "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.11",
    "SLURM_SRUN_COMM_HOST": "10.0.0.11",
    "SLURM_PRIO_PROCESS": "0",
    "SLURM_TASK_PID": "184467",
}


@pytest.fixture
def srun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SRUN_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("srun")
def test_reads_srun_task_variables() -> None:
    env = SLURMEnvironment()
    assert SLURMEnvironment.detect()
    assert env.creates_processes_externally
    assert env.main_address == "node001"
    assert env.main_port == 15000 + 2317
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    env.set_world_size(4)
    env.set_global_rank(3)
    env.validate_settings(num_devices=2, num_nodes=2)


@pytest.mark.usefixtures("srun")
def test_master_port_overrides_the_derived_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29400")
    assert SLURMEnvironment().main_port == 29400


@pytest.mark.usefixtures("srun")
def test_job_nodelist_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NODELIST")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-[7-8]-a")
    assert SLURMEnvironment().main_address == "gpu-7-a"


@pytest.mark.usefixtures("srun")
def test_without_a_nodelist_master_addr_or_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's fallback for a hand-made launch that sets only the task variables."""
    monkeypatch.delenv("SLURM_NODELIST")
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert SLURMEnvironment().main_address == "127.0.0.1"
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.5")
    assert SLURMEnvironment().main_address == "10.0.0.5"


@pytest.mark.usefixtures("srun")
def test_space_separated_nodelist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NODELIST", "host0 host1 host3")
    assert SLURMEnvironment().main_address == "host0"
    assert expand_slurm_nodelist("a[1-2] b") == ["a1", "a2", "b"]


@pytest.mark.usefixtures("srun")
def test_auto_requeue_settings_as_in_lightning() -> None:
    import signal

    env = SLURMEnvironment()
    assert env.auto_requeue is True and env.requeue_signal == signal.SIGUSR1
    env = SLURMEnvironment(auto_requeue=False, requeue_signal=signal.SIGTERM)
    assert env.auto_requeue is False and env.requeue_signal == signal.SIGTERM
    env.requeue()  # auto_requeue off: does nothing (no scontrol call)


@pytest.mark.usefixtures("srun")
def test_malformed_nodelist_names_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NODELIST", "node[001-")
    with pytest.raises(ValueError, match=r"SLURM_NODELIST: Cannot parse the SLURM node list 'node\[001-'"):
        _ = SLURMEnvironment().main_address


@pytest.mark.parametrize("job_name", ["bash", "interactive"])
@pytest.mark.parametrize("shell", ["salloc", "srun --pty"])
def test_python_typed_in_an_interactive_allocation_is_not_detected(
    srun: None, monkeypatch: pytest.MonkeyPatch, job_name: str, shell: str
) -> None:
    monkeypatch.setenv("SLURM_JOB_NAME", job_name)
    if shell == "salloc":  # salloc's command is not part of any step
        monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    else:  # the shell of `srun --pty bash` is a step with a pseudo-terminal
        monkeypatch.setenv("SLURM_STEP_ID", "0")
        monkeypatch.setenv("SLURM_PTY_PORT", "40000")
    assert not SLURMEnvironment.detect()
    assert SLURMEnvironment.job_id() is None


@pytest.mark.parametrize("job_name", ["bash", "interactive"])
def test_srun_tasks_inside_an_interactive_allocation_are_detected(
    srun: None, monkeypatch: pytest.MonkeyPatch, job_name: str
) -> None:
    """``salloc -N2 srun python train.py``: salloc names the job ``interactive``, but srun started the tasks."""
    monkeypatch.setenv("SLURM_JOB_NAME", job_name)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.delenv("SLURM_PTY_PORT", raising=False)
    assert SLURMEnvironment.detect()


def test_not_detected_outside_slurm() -> None:
    assert not SLURMEnvironment.detect()


@pytest.mark.usefixtures("srun")
def test_devices_must_match_ntasks_per_node() -> None:
    with pytest.raises(
        ValueError,
        match=r"`devices=4` does not match the allocation: SLURM_NTASKS_PER_NODE=2 means devices=2"
        r" \(the number of tasks per node configured in SLURM `--ntasks-per-node=2` does not match `devices=4`\)\."
        r" Pass `devices=2`, or submit the job with `#SBATCH --ntasks-per-node=4`",
    ):
        SLURMEnvironment().validate_settings(num_devices=4, num_nodes=2)


@pytest.mark.usefixtures("srun")
def test_num_nodes_must_match_allocated_nodes() -> None:
    with pytest.raises(ValueError, match=r"`num_nodes=1` does not match .* SLURM_NNODES=2 .*--nodes=1"):
        SLURMEnvironment().validate_settings(num_devices=2, num_nodes=1)
    # Lightning's wording is part of the message too.
    with pytest.raises(
        ValueError, match=r"the number of nodes configured in SLURM `--nodes=2` does not match"
    ):
        SLURMEnvironment().validate_settings(num_devices=2, num_nodes=1)


@pytest.mark.usefixtures("srun")
def test_ntasks_without_ntasks_per_node_is_refused_as_in_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    """``#SBATCH --ntasks=4`` alone lets SLURM place the tasks unevenly: refused at construction."""
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    with pytest.raises(
        RuntimeError,
        match=r"You set `--ntasks=4` in your SLURM bash script, but this variable is not supported\."
        r" HINT: Use `--ntasks-per-node=4` instead",
    ):
        SLURMEnvironment()
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task needs no per-node count
    SLURMEnvironment()


@pytest.mark.usefixtures("srun")
@pytest.mark.parametrize("job_name", ["bash", "interactive"])
def test_interactive_allocation_skips_validation(monkeypatch: pytest.MonkeyPatch, job_name: str) -> None:
    """In an interactive allocation fabric launches the processes, so the task counts do not apply."""
    monkeypatch.setenv("SLURM_JOB_NAME", job_name)
    monkeypatch.delenv("SLURM_STEP_ID")
    SLURMEnvironment().validate_settings(num_devices=4, num_nodes=1)


@pytest.mark.usefixtures("srun")
def test_job_num_nodes_is_used_without_nnodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NNODES")
    with pytest.raises(ValueError, match=r"SLURM_JOB_NUM_NODES=2"):
        SLURMEnvironment().validate_settings(num_devices=2, num_nodes=3)
    SLURMEnvironment().validate_settings(num_devices=2, num_nodes=2)


@pytest.mark.usefixtures("srun")
def test_setters_are_ignored_as_in_lightning() -> None:
    env = SLURMEnvironment()
    env.set_world_size(8)
    env.set_global_rank(0)
    assert (env.world_size(), env.global_rank()) == (4, 3)


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node001", ["node001"]),
        ("node[001-003,7]", ["node001", "node002", "node003", "node7"]),
        ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
        ("gpu-[1-2]-x", ["gpu-1-x", "gpu-2-x"]),
        ("node[001-003,7],other[10-11]", ["node001", "node002", "node003", "node7", "other10", "other11"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("host.example.com, other.example.com", ["host.example.com", "other.example.com"]),
    ],
)
def test_expand_examples(nodelist: str, hosts: list[str]) -> None:
    assert expand_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    ("nodelist", "reason"),
    [
        ("", "empty host name"),
        ("a,,b", "empty host name"),
        ("node[1-", r"'\[' without a matching '\]'"),
        ("node]1[", r"'\]' without a matching '\['"),
        ("node[[1]]", r"nested '\['"),
        ("node[3-1]", "range '3-1' counts down"),
        ("node[a-b]", "'a-b' is not a number"),
        ("node[]", "'' is not a number"),
    ],
)
def test_expand_rejects_malformed_lists(nodelist: str, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"Cannot parse the SLURM node list .*: {reason}"):
        expand_slurm_nodelist(nodelist)


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8)
# (first number, how many numbers, width to zero-pad to)
_RANGE = st.tuples(st.integers(0, 2000), st.integers(1, 4), st.integers(1, 5))
_GROUP = st.tuples(_NAME, st.lists(_RANGE, max_size=3), st.text(alphabet="abc-_", max_size=3))


def _compress(prefix: str, ranges: list[tuple[int, int, int]], suffix: str) -> tuple[str, list[str]]:
    """Write one host group the way SLURM does, and list the hosts it stands for."""
    if not ranges:
        return prefix + suffix, [prefix + suffix]
    items: list[str] = []
    hosts: list[str] = []
    for first, count, width in ranges:
        last = first + count - 1
        items.append(f"{first:0{width}d}" if count == 1 else f"{first:0{width}d}-{last:0{width}d}")
        hosts.extend(f"{prefix}{number:0{width}d}{suffix}" for number in range(first, last + 1))
    return f"{prefix}[{','.join(items)}]{suffix}", hosts


@given(st.lists(_GROUP, min_size=1, max_size=4))
def test_expand_inverts_compressed_form(groups: list[tuple[str, list[tuple[int, int, int]], str]]) -> None:
    compressed: list[str] = []
    expected: list[str] = []
    for prefix, ranges, suffix in groups:
        text, hosts = _compress(prefix, ranges, suffix)
        compressed.append(text)
        expected.extend(hosts)
    assert expand_slurm_nodelist(",".join(compressed)) == expected
