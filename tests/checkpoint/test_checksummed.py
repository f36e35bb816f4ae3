"""Checksums taken while writing (fabric/checkpoint/checksummed.py) equal those of the bytes on disk.

A sharded save no longer reads its files back for the manifest: the CRC-32 is taken from the buffers on
their way to the file. These tests compare every record with a read-back checksum of the same file, so
a stream that missed, repeated or reordered a byte fails here; and a manifest written the old way (read
back) is byte-identical to the new one, so old checkpoints and new ones verify alike.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Literal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric import Fabric
from fabric.checkpoint.checksummed import Recorder, save_checksummed
from fabric.checkpoint.io import CheckpointError
from fabric.checkpoint.sharded import (
    DCP_METADATA_FILE,
    MANIFEST_FILE,
    checksum,
    files_to_record,
    read_manifest,
    save_shards,
    write_manifest,
)
from fabric.strategies import SingleDeviceStrategy


class ShardedSingleDevice(SingleDeviceStrategy):
    """One process that writes the sharded directory layout (as FSDP with one device does)."""

    @property
    def checkpoint_layout(self) -> Literal["file", "sharded"]:
        return "sharded"


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int16, torch.uint8, torch.bool]


@settings(max_examples=25, deadline=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.tuples(st.sampled_from(_DTYPES), st.lists(st.integers(0, 5), min_size=0, max_size=3)),
        ),
        max_size=6,
    )
)
def test_a_stream_records_exactly_the_bytes_that_reached_the_file(tmp_path_factory, pieces) -> None:
    path = tmp_path_factory.mktemp("stream") / "file.bin"
    recorder = Recorder(str(path.parent))
    with recorder.stream(path) as stream:
        for piece in pieces:
            if isinstance(piece, bytes):
                stream.write(piece)
            else:  # a buffer of multi-byte elements in several dimensions, as a tensor's storage is
                dtype, shape = piece
                tensor = (torch.arange(math.prod(shape)) % 5 * 1.5).to(dtype).reshape(shape)
                stream.write(tensor.numpy().data)
    data = path.read_bytes()
    assert recorder.records == {"file.bin": {"size": len(data), "crc32": zlib.crc32(data)}}
    assert recorder.records["file.bin"] == checksum(str(path))


def test_a_stream_that_moved_its_position_vouches_for_nothing(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path))
    with recorder.stream(tmp_path / "moved.bin") as stream:
        stream.write(b"abcdef")
        stream.seek(2)
        stream.write(b"XY")
    assert recorder.records == {}  # the saving code then reads the file back instead


def test_a_failed_write_keeps_no_record(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"), recorder.stream(tmp_path / "half.bin") as stream:
        stream.write(b"half")
        raise RuntimeError("boom")
    assert recorder.records == {}


def test_torch_save_through_the_recorder_matches_the_file(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path))
    save_checksummed({"step": 3, "w": torch.randn(64, 3)}, str(tmp_path / "meta.pt"), recorder)
    assert recorder.records == {"meta.pt": checksum(str(tmp_path / "meta.pt"))}
    assert torch.load(tmp_path / "meta.pt", weights_only=True)["step"] == 3


@pytest.mark.timeout(120)
def test_dcp_writer_records_every_file_it_writes_including_the_renamed_metadata(tmp_path: Path) -> None:
    shards = {
        "model": {f"layer{i}.weight": torch.randn(50, 40) for i in range(3)},
        "optimizer": {"state": {"step": torch.tensor(5.0), "exp_avg": torch.randn(7).to(torch.bfloat16)}},
        "extra": {"name": "a string stored as bytes", "n": 3},
    }
    records = save_shards(shards, str(tmp_path))
    names = files_to_record(str(tmp_path))
    assert DCP_METADATA_FILE in names and not any(name.endswith(".tmp") for name in records)
    assert records == {name: checksum(str(tmp_path / name)) for name in names}


@pytest.mark.timeout(180)
def test_the_manifest_equals_a_read_back_one_and_old_manifests_load(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1, strategy=ShardedSingleDevice())
    torch.manual_seed(0)
    model = fabric.setup_module(torch.nn.Linear(32, 16))
    directory = tmp_path / "ckpt"
    fabric.save(directory, {"model": model, "step": 7})
    new = (directory / MANIFEST_FILE).read_bytes()
    manifest = read_manifest(str(directory))
    assert manifest is not None and sorted(manifest) == files_to_record(str(directory))
    # the manifest as the read-back pass writes it (every checkpoint before this change): the same bytes
    write_manifest(str(directory), {n: checksum(str(directory / n)) for n in files_to_record(str(directory))})
    assert (directory / MANIFEST_FILE).read_bytes() == new
    assert all("crc32" in record for record in json.loads(new)["files"].values())
    expected = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    assert fabric.load(directory, {"model": model}) == {"step": 7}
    assert torch.equal(model.weight.detach(), expected)
    # and a flipped byte in a shard the stream recorded is still caught, naming the file
    shard = next(directory.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=shard.name):
        fabric.load(directory, {"model": model})
