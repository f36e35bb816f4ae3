"""Tests for fabric.checkpoint.io: atomic saves that never lose the last checkpoint, loads that refuse bad files.

Failures are produced for real: corrupted bytes on disk, an object that raises while pickled, a file size
limit in a child process, a child killed with SIGKILL mid-save. Nothing in the code under test is mocked.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.checkpoint import CheckpointError, atomic_save, fsync_directory, safe_load

REPO_ROOT = Path(__file__).resolve().parents[2]
POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and resource limits")


# ---------------------------------------------------------------------------------------------- helpers


def assert_identical(expected: Any, actual: Any, where: str = "state") -> None:
    """Exact structural equality: same types, same keys in the same order, bit-equal tensors."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, where
        assert actual.shape == expected.shape, where
        assert torch.equal(actual, expected), f"{where}: tensor values differ"
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys differ"
        for key in expected:
            assert_identical(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_identical(left, right, f"{where}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def trained_state(seed: int = 0, width: int = 8) -> dict[str, Any]:
    """A realistic checkpoint: model, Adam state after one step, GradScaler state and plain Python values."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.randn(4, width)).square().mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "tensors": {
            "float16": torch.randn(3, 5).half(),
            "bfloat16": torch.randn(7).bfloat16(),
            "float64": torch.randn(2, 2, dtype=torch.float64),
            "int8": torch.arange(-8, 8, dtype=torch.int8),
            "uint8": torch.arange(0, 255, 17, dtype=torch.uint8),
            "int64": torch.tensor([-(2**62), 0, 2**62]),
            "bool": torch.tensor([True, False, True]),
            "complex64": torch.randn(4, dtype=torch.complex64),
            "scalar": torch.tensor(3.5),
            "empty": torch.empty(0, 3),
            "non_contiguous": torch.arange(12.0).reshape(3, 4).t(),
        },
        "step": 1234,
        "epoch": 3,
        "lr": 1e-3,
        "special_floats": [math.inf, -math.inf, -0.0, 1e-300],
        "name": "run-ü-42",
        "history": [0.5, 0.25, [1, 2, {"nested": "yes"}]],
        "pair": (1, "two"),
        "nothing": None,
    }


def temp_files(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir() if ".tmp-" in entry.name)


def child_env() -> dict[str, str]:
    """The environment for a child Python that must import this checkout's `fabric`."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


def run_python(script: str, *args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


# --------------------------------------------------------------------------------------------- round trip


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state = trained_state()
    path = tmp_path / "ckpt.pt"
    atomic_save(state, path)
    assert_identical(state, safe_load(path))
    assert_identical(state, safe_load(str(path), map_location=torch.device("cpu"), verify=False))


def test_save_replaces_the_target_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_save({"version": 1, "w": torch.zeros(10)}, path)
    atomic_save({"version": 2, "w": torch.ones(10)}, path)
    assert_identical({"version": 2, "w": torch.ones(10)}, safe_load(path))
    assert [entry.name for entry in tmp_path.iterdir()] == ["ckpt.pt"]


def test_save_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "last.pt"
    atomic_save({"x": torch.arange(3)}, path)
    assert_identical({"x": torch.arange(3)}, safe_load(path))


def test_save_into_a_directory_path_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_save({"x": 1}, tmp_path)
    assert temp_files(tmp_path) == []


@POSIX_ONLY
def test_save_through_a_symlink_replaces_the_file_it_points_to(tmp_path: Path) -> None:
    real = tmp_path / "epoch-3.pt"
    atomic_save({"v": 1}, real)
    link = tmp_path / "last.pt"
    link.symlink_to(real)
    atomic_save({"v": 2}, link)
    assert link.is_symlink()
    assert safe_load(real) == {"v": 2}


def test_legacy_non_zip_checkpoints_load_and_their_corruption_is_reported(tmp_path: Path) -> None:
    state = {"w": torch.randn(4, 4), "step": 3}
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert_identical(state, safe_load(path))

    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=r"legacy\.pt.*restore it from a backup"):
        safe_load(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        safe_load(path)


def test_loading_a_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        safe_load(tmp_path)


def test_file_that_is_not_a_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("these are not the weights you are looking for\n" * 20)
    with pytest.raises(CheckpointError, match=r"notes\.pt") as info:
        safe_load(path)
    assert info.value.__cause__ is not None


def test_flipped_byte_in_tensor_data_is_detected(tmp_path: Path) -> None:
    # torch.load alone returns the wrong number here: its zip reader does not check CRC-32.
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if info.filename.endswith("data/0"))
    data = bytearray(path.read_bytes())
    data[data_offset(bytes(data), record) + 400] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ckpt\.pt' is corrupted or truncated") as info:
        safe_load(path)
    assert isinstance(info.value.__cause__, zipfile.BadZipFile)


def test_the_records_that_steer_the_load_are_checked_apart_from_the_tensor_bytes(tmp_path: Path) -> None:
    # safe_load checks the pickle (every tensor's size and type) before torch.load starts, and the tensor
    # bytes on a second thread while torch.load reads them: each half must catch exactly its own records.
    from fabric.checkpoint.io import _verify_zip_archive

    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    good = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        tensor = next(info for info in archive.infolist() if info.filename.endswith("data/0"))
        pickle_record = next(info for info in archive.infolist() if info.filename.endswith("data.pkl"))
    for record, caught_by in ((tensor, "data"), (pickle_record, "metadata")):
        data = bytearray(good)
        data[data_offset(good, record) + 4] ^= 0x01
        path.write_bytes(bytes(data))
        with open(path, "rb") as file:
            if caught_by == "data":
                _verify_zip_archive(file, "ckpt", data=False)
            else:
                _verify_zip_archive(file, "ckpt", metadata=False)
            with pytest.raises(CheckpointError, match="corrupted or truncated"):
                _verify_zip_archive(file, "ckpt", **{"metadata" if caught_by == "data" else "data": False})
        with pytest.raises(CheckpointError, match="corrupted or truncated"):
            safe_load(path)


def test_the_second_handle_of_a_concurrent_check_must_be_the_file_that_is_loaded(tmp_path: Path) -> None:
    # The tensor bytes are checked through a second handle opened by name; if an atomic_save replaced the
    # file since the first was opened, the two differ and safe_load falls back to checking the first.
    from fabric.checkpoint.io import _same_file

    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.zeros(3)}, path)
    with open(path, "rb") as first, open(path, "rb") as second:
        assert _same_file(first, second)
        atomic_save({"w": torch.ones(3)}, path)
        with open(path, "rb") as replaced:
            assert not _same_file(first, replaced)
    assert torch.equal(safe_load(path)["w"], torch.ones(3))


def data_offset(data: bytes, record: zipfile.ZipInfo) -> int:
    """Where a record's bytes start: after its local header, whose name and extra field lengths it gives."""
    name_length = int.from_bytes(data[record.header_offset + 26 : record.header_offset + 28], "little")
    extra_length = int.from_bytes(data[record.header_offset + 28 : record.header_offset + 30], "little")
    return record.header_offset + 30 + name_length + extra_length


def central_directory_entry(data: bytes, record: zipfile.ZipInfo) -> int:
    """Offset of a record's central directory entry, the copy of its header that readers look names up in."""
    start = data.rfind(b"PK\x01\x02" + data[record.header_offset + 4 : record.header_offset + 6])
    while start != -1:
        name_length = int.from_bytes(data[start + 28 : start + 30], "little")
        if data[start + 46 : start + 46 + name_length] == record.filename.encode():
            return start
        start = data.rfind(b"PK\x01\x02", 0, start)
    raise AssertionError(f"no central directory entry for {record.filename}")


def test_record_flagged_as_directory_is_rejected(tmp_path: Path) -> None:
    # No CRC covers a record's DOS attributes, and PyTorch's reader returns an unfilled buffer for a record
    # whose directory bit is set: one flipped bit there turns weights into zeros or garbage.
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.arange(1.0, 101.0)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if info.filename.endswith("data/0"))
    data[central_directory_entry(bytes(data), record) + 38] |= 0x10  # external attributes, low byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="marked as a directory"):
        safe_load(path)


def test_every_flipped_byte_outside_tensor_data_raises_or_loads_identically(tmp_path: Path) -> None:
    # Exhaustive over the zip structure of a tiny checkpoint, where rare header fields would take a
    # property test many examples to hit.
    path = tmp_path / "tiny.pt"
    expected = {"w": torch.arange(6.0), "b": torch.tensor([True, False]), "step": 5}
    atomic_save(expected, path)
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        payload = {
            offset
            for record in archive.infolist()
            if "/data/" in record.filename
            for offset in range(data_offset(data, record), data_offset(data, record) + record.compress_size)
        }
    corrupted = tmp_path / "corrupted.pt"
    for offset in range(len(data)):
        if offset in payload:
            continue
        corrupted.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :])
        try:
            loaded = safe_load(corrupted)
        except CheckpointError:
            continue
        assert_identical(expected, loaded, f"byte {offset} flipped")


def test_fsync_directory_accepts_directories_and_ignores_what_it_cannot_open(tmp_path: Path) -> None:
    fsync_directory(tmp_path)
    fsync_directory(tmp_path / "does-not-exist")


# ------------------------------------------------------------------------------------- corruption (property)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, Any, list[int]]:
    """A ~20 KB checkpoint with many records, its bytes, its content, and the offsets outside tensor data."""
    directory = tmp_path_factory.mktemp("corruption")
    path = directory / "original.pt"
    state = trained_state(seed=1, width=24)
    atomic_save(state, path)
    data = path.read_bytes()
    # Header, central directory and pickle bytes are few but the interesting ones: sample them as often as
    # the tensor payloads.
    payload: set[int] = set()
    with zipfile.ZipFile(path) as archive:
        for record in archive.infolist():
            if "/data/" in record.filename:
                start = data_offset(data, record)
                payload.update(range(start, start + record.compress_size))
    structure = [offset for offset in range(len(data)) if offset not in payload]
    assert 10_000 < len(data) < 40_000
    return directory, data, safe_load(path), structure


def offsets(data: bytes, structure: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, len(data) - 1), st.sampled_from(structure))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(choice=st.data())
def test_truncated_checkpoint_raises_checkpoint_error(
    small_checkpoint: tuple[Path, bytes, Any, list[int]], choice: st.DataObject
) -> None:
    directory, data, _, structure = small_checkpoint
    length = choice.draw(offsets(data, structure), label="length")
    path = directory / "truncated.pt"
    path.write_bytes(data[:length])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        safe_load(path)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(choice=st.data())
def test_corrupted_checkpoint_raises_or_loads_identically(
    small_checkpoint: tuple[Path, bytes, Any, list[int]], choice: st.DataObject
) -> None:
    directory, data, expected, structure = small_checkpoint
    offset = choice.draw(offsets(data, structure), label="offset")
    length = choice.draw(st.integers(1, min(8, len(data) - offset)), label="length")
    original = data[offset : offset + length]
    replacement = choice.draw(
        st.one_of(
            st.just(bytes(byte ^ 0xFF for byte in original)),
            st.integers(0, 7).map(lambda bit: bytes([original[0] ^ (1 << bit)]) + original[1:]),
            st.binary(min_size=length, max_size=length),
        ),
        label="replacement",
    )
    path = directory / "corrupted.pt"
    path.write_bytes(data[:offset] + replacement + data[offset + length :])
    try:
        loaded = safe_load(path)
    except CheckpointError as error:
        assert "corrupted.pt" in str(error)
        return
    # Only bytes that no reader looks at (timestamps, attributes, padding, unused header fields) may change
    # without an error, and then the content must be exactly the original.
    assert_identical(expected, loaded)


# ------------------------------------------------------------------------------------------- unsafe pickles


def write_marker(path: str) -> str:
    """Stands in for arbitrary code: it runs only if a pickle payload is executed."""
    Path(path).write_text("code ran")
    return path


class RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return write_marker, (str(self.marker),)


class PlainObject:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlainObject) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


def test_payload_that_would_run_code_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    atomic_save({"w": torch.ones(2), "payload": RunsCodeWhenUnpickled(marker)}, path)

    with pytest.raises(CheckpointError, match=r"evil\.pt") as info:
        safe_load(path)
    message = str(info.value)
    assert "arbitrary Python objects" in message
    assert "could run code" in message
    assert "weights_only=False" in message
    assert "write_marker" in message
    assert not marker.exists()

    # The payload is real: full unpickling does run it, which is what weights_only=True prevented above.
    safe_load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_os_system_payload_is_refused(tmp_path: Path) -> None:
    class CallsOsSystem:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return os.system, (f"touch {tmp_path / 'marker'}",)

    path = tmp_path / "evil.pt"
    atomic_save({"payload": CallsOsSystem()}, path)  # pickles os.system itself, not the local class
    with pytest.raises(
        CheckpointError, match=r"arbitrary Python objects \(posix\.system\).*weights_only=False"
    ):
        safe_load(path)
    assert not (tmp_path / "marker").exists()


def test_arbitrary_class_needs_weights_only_false_and_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    state = {"config": PlainObject(7), "w": torch.arange(4)}
    atomic_save(state, path)
    with pytest.raises(CheckpointError, match=r"objects\.pt.*PlainObject.*weights_only=False"):
        safe_load(path)
    loaded = safe_load(path, weights_only=False)
    assert loaded["config"] == PlainObject(7)
    assert torch.equal(loaded["w"], torch.arange(4))


# ------------------------------------------------------------------------------------------- failed saves


class FailsWhilePickled:
    def __reduce__(self) -> Any:
        raise ValueError("cannot pickle this on purpose")


def test_object_that_fails_to_pickle_leaves_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    old = {"step": 1, "w": torch.arange(100.0)}
    atomic_save(old, path)
    # The big tensor comes first, so the failure happens after data has reached the temporary file.
    new = {"w": torch.randn(1 << 16), "step": 2, "bad": FailsWhilePickled()}
    with pytest.raises(ValueError, match="on purpose"):
        atomic_save(new, path)
    assert_identical(old, safe_load(path))
    assert temp_files(tmp_path) == []


def test_keyboard_interrupt_while_pickling_leaves_previous_checkpoint_intact(tmp_path: Path) -> None:
    class Interrupts:
        def __reduce__(self) -> Any:
            raise KeyboardInterrupt

    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.ones(1000), "x": Interrupts()}, path)
    assert safe_load(path) == {"step": 1}
    assert temp_files(tmp_path) == []


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_write_failure_from_file_size_limit_leaves_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    old = {"step": 1, "w": torch.arange(10.0)}
    atomic_save(old, path)
    script = """
        import errno, json, resource, signal, sys
        import torch
        from fabric.checkpoint import atomic_save

        state = {"w": torch.ones(4 << 20)}  # 16 MiB, over the 1 MiB limit below
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            atomic_save(state, sys.argv[1])
        except OSError as error:
            print(json.dumps({"errno": error.errno, "message": str(error)}))
        else:
            print(json.dumps({"errno": None}))
    """
    result = run_python(script, str(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errno"] == 27  # EFBIG
    assert "ckpt.pt" in report["message"] and "unchanged" in report["message"]
    assert_identical(old, safe_load(path))
    assert temp_files(tmp_path) == []


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_process_killed_mid_save_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": -1}, path)
    script = """
        import sys
        import torch
        from fabric.checkpoint import atomic_save

        weights = torch.arange(24 << 20, dtype=torch.float32)  # ~100 MB
        step = 0
        while True:
            print(f"saving {step}", flush=True)
            atomic_save({"step": step, "w": weights}, sys.argv[1])
            step += 1
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:  # wait until one save completed and the next one started
            if line.strip() == "saving 1":
                break
        time.sleep(0.15)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    loaded = safe_load(path)
    assert loaded["step"] >= 0
    assert torch.equal(loaded["w"], torch.arange(24 << 20, dtype=torch.float32))

    # A temp file of the killed process may remain; the next save works and removes it.
    atomic_save({"step": 100}, path)
    assert safe_load(path) == {"step": 100}
    assert temp_files(tmp_path) == []


@POSIX_ONLY
def test_only_stale_temp_files_of_dead_processes_on_this_host_are_removed(tmp_path: Path) -> None:
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    host = "".join(c if c.isalnum() or c in "_." else "_" for c in socket.gethostname())[:40]
    stale = tmp_path / f".ckpt.pt.tmp-{host}-{dead_pid}-0123456789abcdef"
    other_host = tmp_path / f".ckpt.pt.tmp-some-other-node-{dead_pid}-0123456789abcdef"
    live = tmp_path / f".ckpt.pt.tmp-{host}-{os.getppid()}-0123456789abcdef"
    unrelated = tmp_path / f".ckpt.pt.tmp-{host}-{dead_pid}-not-ours"
    for file in (stale, other_host, live, unrelated):
        file.write_bytes(b"partial")

    atomic_save({"step": 1}, tmp_path / "ckpt.pt")
    assert safe_load(tmp_path / "ckpt.pt") == {"step": 1}
    assert not stale.exists()
    assert other_host.exists() and live.exists() and unrelated.exists()


# --------------------------------------------------------------------------------------------------- memory


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_peak_memory_of_save_stays_near_the_state_size(tmp_path: Path) -> None:
    script = """
        import json, resource, sys
        import torch
        from fabric.checkpoint import atomic_save

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        state = {f"layer{i}": torch.randn(25 << 20 >> 2) for i in range(8)}  # 8 x 25 MiB, all written
        state_bytes = sum(t.numel() * t.element_size() for t in state.values())
        atomic_save({"warm": torch.ones(4)}, sys.argv[1] + ".warmup")  # first-call imports and caches
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        atomic_save(state, sys.argv[1])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        print(json.dumps({"state": state_bytes, "before": before, "after": after}))
    """
    result = run_python(script, str(tmp_path / "big.pt"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["state"] >= 200 * 2**20
    assert report["before"] >= report["state"]  # the tensors were materialized before measuring
    growth = report["after"] - report["before"]
    assert growth < 0.25 * report["state"], f"save grew peak memory by {growth / 2**20:.0f} MiB"
