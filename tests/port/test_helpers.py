"""The port tests' runner: a repeated reference run starts from the files its first attempt started from."""

from __future__ import annotations

from pathlib import Path

from tests.port.helpers import _files, _restore


def test_restore_undoes_what_an_aborted_attempt_wrote(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "snapshot.pt").write_bytes(b"epoch 2")
    before = _files(tmp_path)
    # the attempt that torch aborted at exit had already moved the snapshot on and written a new file
    (tmp_path / "snapshot.pt").write_bytes(b"epoch 3")
    (tmp_path / "final.pt").write_bytes(b"weights")
    (tmp_path / "sub").mkdir()  # folders are not the runner's to touch
    _restore(tmp_path, before)
    assert (tmp_path / "snapshot.pt").read_bytes() == b"epoch 2"
    assert (tmp_path / "train.py").read_text() == "print('hi')\n"
    assert not (tmp_path / "final.pt").exists() and (tmp_path / "sub").is_dir()
