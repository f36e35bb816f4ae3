"""Replaced and rotated checkpoints vanish at once; their space is freed by a background thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from fabric.checkpoint import atomic_save, reclaim, safe_load

POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="file descriptors of deleted files: POSIX")


def _deleted_files_held_open(directory: Path) -> list[str]:
    """Files under ``directory`` that have no name any more but are still open in this process."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)) and target.endswith(" (deleted)"):
            held.append(target)
    return held


def _reclaim_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fabric-reclaim-space"]


@POSIX_ONLY
def test_atomic_save_frees_the_replaced_file_in_the_background_and_holds_nothing_afterwards(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.zeros(1000)}, path)
    atomic_save({"w": torch.ones(1000)}, path)
    # The name holds the new checkpoint as soon as the call returns, whatever the thread is doing.
    assert torch.equal(safe_load(path)["w"], torch.ones(1000))
    reclaim.wait()
    assert _deleted_files_held_open(tmp_path) == []
    assert _reclaim_threads() == []  # the worker exists only while there is work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@POSIX_ONLY
def test_hold_keeps_the_old_data_readable_until_release(tmp_path: Path) -> None:
    path = tmp_path / "old.bin"
    path.write_bytes(b"old checkpoint")
    fd = reclaim.hold(str(path))
    assert fd is not None
    os.remove(path)
    assert os.pread(fd, 3, 0) == b"old"  # the blocks are still allocated: nothing was freed yet
    assert _deleted_files_held_open(tmp_path)
    reclaim.release(fd)
    reclaim.wait()
    assert _deleted_files_held_open(tmp_path) == []


def test_hold_returns_none_for_a_missing_file_and_for_a_file_with_another_link(tmp_path: Path) -> None:
    assert reclaim.hold(str(tmp_path / "missing.pt")) is None
    (tmp_path / "a.pt").write_bytes(b"x")
    os.link(tmp_path / "a.pt", tmp_path / "b.pt")
    assert reclaim.hold(str(tmp_path / "a.pt")) is None  # removing one name frees nothing
    reclaim.release(None)  # a no-op


def test_delete_hides_a_directory_at_once_and_removes_it_in_the_background(tmp_path: Path) -> None:
    victim = tmp_path / "step-000000001.ckpt"
    victim.mkdir()
    for i in range(20):
        (victim / f"__{i}_0.distcp").write_bytes(os.urandom(1024))
    (tmp_path / "step-000000002.ckpt").mkdir()
    reclaim.delete(str(victim))
    assert not victim.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["step-000000002.ckpt"]
    reclaim.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000002.ckpt"]


def test_delete_of_a_file_and_of_a_missing_path(tmp_path: Path) -> None:
    victim = tmp_path / "step-000000001.ckpt"
    victim.write_bytes(b"x" * 4096)
    reclaim.delete(str(victim))
    assert not victim.exists()
    with pytest.raises(FileNotFoundError):
        reclaim.delete(str(victim))
    reclaim.wait()
    assert list(tmp_path.iterdir()) == []


def test_remove_leftovers_removes_only_directories_that_delete_hid(tmp_path: Path) -> None:
    left = tmp_path / f".step-000000001.ckpt.deleted-{'a' * 32}"
    left.mkdir()
    (left / "shard").write_bytes(b"x")
    keep = [
        tmp_path / ".step-000000002.ckpt.deleted-short",  # not a name delete() makes
        tmp_path / ".ckpt.old-0123",  # a previous version that a crash left: loadable, not garbage
        tmp_path / "step-000000003.ckpt",
    ]
    for path in keep:
        path.mkdir()
    reclaim.remove_leftovers(str(tmp_path))
    reclaim.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_a_normal_exit_finishes_the_background_removal(tmp_path: Path) -> None:
    victim = tmp_path / "big.ckpt"
    script = f"""
        import os
        from fabric.checkpoint import reclaim
        victim = {str(victim)!r}
        os.mkdir(victim)
        for i in range(300):
            with open(os.path.join(victim, f"shard-{{i}}"), "wb") as f:
                f.write(os.urandom(4096))
        reclaim.delete(victim)
        # no wait(): the interpreter joins the worker before it exits
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=50)
    assert list(tmp_path.iterdir()) == []


@POSIX_ONLY
@pytest.mark.timeout(60)
def test_a_forked_child_frees_space_without_the_parents_worker(tmp_path: Path) -> None:
    (tmp_path / "parent.ckpt").mkdir()
    reclaim.delete(str(tmp_path / "parent.ckpt"))  # the parent's worker may be running at the fork
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            (tmp_path / "child.ckpt").mkdir()
            reclaim.delete(str(tmp_path / "child.ckpt"))
            reclaim.wait()  # would hang on the parent's (absent) worker without the fork reset
            code = 0 if not (tmp_path / "child.ckpt").exists() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    reclaim.wait()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_save_takes_no_space_until_the_previous_checkpoint_is_freed(tmp_path: Path) -> None:
    gate = threading.Event()
    reclaim._submit(gate.wait)  # stands for the slow freeing of a replaced checkpoint
    saved = threading.Event()

    def save() -> None:
        atomic_save({"w": torch.ones(10)}, tmp_path / "next.pt")
        saved.set()

    saver = threading.Thread(target=save)
    saver.start()
    try:
        assert not saved.wait(0.5)
        assert list(tmp_path.iterdir()) == []  # not even a temporary file yet
    finally:
        gate.set()
    assert saved.wait(50)
    saver.join()
    assert torch.equal(safe_load(tmp_path / "next.pt")["w"], torch.ones(10))
