from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fabric.environments import LSFEnvironment

SLOTS_PER_NODE = 42


@pytest.fixture
def rankfile(tmp_path: Path) -> Path:
    """A Summit-style rankfile: the launch node, then one line per slot of each compute node."""
    path = tmp_path / "1234567.rankfile"
    lines = ["batch3"] + ["a01n01"] * SLOTS_PER_NODE + ["a01n02"] * SLOTS_PER_NODE
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def jsrun(monkeypatch: pytest.MonkeyPatch, rankfile: Path) -> None:
    """Task 7 of 12 (the second on a01n02) of `bsub -nnodes 2` + `jsrun -n 12 -a 1 -g 1 -c 7`."""
    compute = " ".join(["a01n01"] * SLOTS_PER_NODE + ["a01n02"] * SLOTS_PER_NODE)
    for name, value in {
        "LSB_JOBID": "1234567",
        "LSB_JOBNAME": "train",
        "LSB_QUEUE": "batch",
        "LSB_DJOB_RANKFILE": str(rankfile),
        "LSB_DJOB_HOSTFILE": str(rankfile),
        "LSB_HOSTS": f"batch3 {compute}",
        "LSB_MCPU_HOSTS": f"batch3 1 a01n01 {SLOTS_PER_NODE} a01n02 {SLOTS_PER_NODE}",
        "JSM_NAMESPACE_RANK": "7",
        "JSM_NAMESPACE_SIZE": "12",
        "JSM_NAMESPACE_LOCAL_RANK": "1",
        "JSM_NAMESPACE_LOCAL_SIZE": "6",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(socket, "gethostname", lambda: "a01n02")


@pytest.mark.usefixtures("jsrun")
def test_reads_jsrun_variables_and_rankfile() -> None:
    env = LSFEnvironment()
    assert LSFEnvironment.detect()
    assert env.creates_processes_externally
    assert env.main_address == "a01n01"  # the launch node "batch3" is skipped
    assert env.main_port == 4567 % 1000 + 10000  # Lightning's derivation, so mixed jobs agree
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (12, 7, 1, 1)
    env.set_world_size(12)
    env.set_global_rank(7)
    env.validate_settings(num_devices=6, num_nodes=2)


@pytest.mark.usefixtures("jsrun")
def test_node_rank_matches_fully_qualified_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "a01n01.summit.olcf.ornl.gov")
    assert LSFEnvironment().node_rank() == 0


@pytest.mark.usefixtures("jsrun")
def test_host_outside_the_job_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "login1")
    with pytest.raises(RuntimeError, match=r"This host, 'login1', is not among the compute hosts"):
        LSFEnvironment().node_rank()


@pytest.mark.usefixtures("jsrun")
def test_missing_rankfile_names_variable_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "gone.rankfile"
    monkeypatch.setenv("LSB_DJOB_RANKFILE", str(missing))
    with pytest.raises(
        FileNotFoundError, match=r"Cannot read the LSF rankfile LSB_DJOB_RANKFILE='.*gone\.rankfile'"
    ):
        _ = LSFEnvironment().main_address


@pytest.mark.usefixtures("jsrun")
def test_rankfile_with_only_the_launch_node_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "launch-only.rankfile"
    path.write_text("batch3\n\n")
    monkeypatch.setenv("LSB_DJOB_RANKFILE", str(path))
    with pytest.raises(ValueError, match=r"lists no compute host: it has 1 non-empty line"):
        _ = LSFEnvironment().main_address


@pytest.mark.usefixtures("jsrun")
def test_validate_settings_errors() -> None:
    env = LSFEnvironment()
    with pytest.raises(ValueError, match=r"`num_nodes=3` does not match .*2 compute hosts.*bsub -nnodes 3"):
        env.validate_settings(num_devices=4, num_nodes=3)
    with pytest.raises(ValueError, match=r"`devices=4` does not match .*JSM_NAMESPACE_SIZE=12 .* devices=6"):
        env.validate_settings(num_devices=4, num_nodes=2)


@pytest.mark.usefixtures("jsrun")
def test_master_port_overrides_the_derived_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29400")
    assert LSFEnvironment().main_port == 29400


@pytest.mark.parametrize(
    "missing", ["LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE"]
)
def test_not_detected_without_each_required_variable(
    jsrun: None, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.delenv(missing)
    assert not LSFEnvironment.detect()


def test_port_derivation_is_lightnings_and_bad_job_ids_are_value_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fabric.environments.lsf import lsf_port_from_job_id

    assert lsf_port_from_job_id("123456") == 10456
    assert lsf_port_from_job_id("7") == 10007
    with pytest.raises(ValueError, match="LSB_JOBID='12a' is not a number"):
        lsf_port_from_job_id("12a")
    with pytest.raises(ValueError, match="LSB_JOBID is not set"):
        lsf_port_from_job_id(None)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LSB_JOBID": "1234"}, "Did not find the environment variable `LSB_DJOB_RANKFILE`"),
        (
            {"LSB_JOBID": "1234", "LSB_DJOB_RANKFILE": ""},
            "The environment variable `LSB_DJOB_RANKFILE` is empty",
        ),
        ({"LSB_DJOB_RANKFILE": "PATH"}, "Could not find job id in environment variable LSB_JOBID"),
    ],
)
def test_construction_checks_rankfile_and_job_id_as_in_lightning(
    monkeypatch: pytest.MonkeyPatch, rankfile: Path, environ: dict[str, str], message: str
) -> None:
    """Lightning's ``LSFEnvironment()`` raises these ``ValueError``s (its test_lsf.py), before any launch."""
    for name, value in environ.items():
        monkeypatch.setenv(name, str(rankfile) if value == "PATH" else value)
    with pytest.raises(ValueError, match=message):
        LSFEnvironment()


def test_master_port_stands_in_for_the_job_id(monkeypatch: pytest.MonkeyPatch, rankfile: Path) -> None:
    monkeypatch.setenv("LSB_DJOB_RANKFILE", str(rankfile))
    monkeypatch.setenv("MASTER_PORT", "29400")
    assert LSFEnvironment().main_port == 29400
