"""Lightning's small public utilities that ports import by name: same results, same warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from fabric.utilities.apply_func import convert_tensors_to_scalars, move_data_to_device
from fabric.utilities.cloud_io import get_filesystem
from fabric.utilities.data import has_iterable_dataset, has_len
from fabric.utilities.warnings import PossibleUserWarning, disable_possible_user_warnings


class _Sized(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(float(index))


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.tensor(1.0)


class _StreamWithLen(_Stream):
    def __len__(self) -> int:
        return 1


def test_has_iterable_dataset_and_has_len() -> None:
    assert has_iterable_dataset(DataLoader(_Stream()))
    assert not has_iterable_dataset(DataLoader(_Sized(2)))
    assert has_len(DataLoader(_Sized(2)))
    assert not has_len(DataLoader(_Stream()))
    with pytest.warns(UserWarning, match="`DataLoader` returned 0 length"):
        assert has_len(DataLoader(_Sized(0)))
    with pytest.warns(UserWarning, match="defines `__len__`"):
        assert has_len(DataLoader(_StreamWithLen()))


def test_convert_tensors_to_scalars_leaves_the_input_alone() -> None:
    assert convert_tensors_to_scalars("s") == "s"
    assert convert_tensors_to_scalars(True) is True
    data = {"a": torch.tensor(2.0), "b": [torch.tensor([3])], "c": 1.5}
    result = convert_tensors_to_scalars(data)
    assert result == {"a": 2.0, "b": [3], "c": 1.5}
    assert type(result["a"]) is float and type(result["b"][0]) is int
    assert isinstance(data["a"], torch.Tensor)
    with pytest.raises(ValueError, match=r"does not contain a single element \(2 elements\)"):
        convert_tensors_to_scalars({"x": torch.zeros(2)})
    assert move_data_to_device([torch.ones(1)], "cpu")[0].device.type == "cpu"


def test_get_filesystem(tmp_path) -> None:
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    assert isinstance(get_filesystem(tmp_path / "x.ckpt"), LocalFileSystem)
    assert isinstance(get_filesystem("relative/file"), LocalFileSystem)
    assert isinstance(get_filesystem("memory://bucket/x.ckpt"), MemoryFileSystem)


def test_disable_possible_user_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.warns(PossibleUserWarning):
            warnings.warn("maybe", PossibleUserWarning, stacklevel=1)
        disable_possible_user_warnings()
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("maybe", PossibleUserWarning, stacklevel=1)
            warnings.warn("other", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["other"]


@pytest.mark.parametrize("bad", [0, -1])
def test_suggested_max_num_workers_rejects_no_processes(bad: int) -> None:
    from fabric.utilities.data import suggested_max_num_workers

    with pytest.raises(ValueError, match=rf"local_world_size={bad}\): local_world_size should be >= 1"):
        suggested_max_num_workers(bad)


def test_deepspeed_precision_by_its_lightning_name_without_importing_deepspeed() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from fabric.plugins import DeepSpeedPrecision; "
        "from fabric.precision.deepspeed import DeepSpeedPrecision as Ours; "
        "assert DeepSpeedPrecision is Ours; p = DeepSpeedPrecision('bf16-mixed'); "
        "assert p.config_section() == {'bf16': {'enabled': True}}; assert 'deepspeed' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
