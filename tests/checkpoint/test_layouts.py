"""The pipeline writes in the layout the strategy names (``checkpoint_layout``), and ``Fabric.save``/``load``
hand it what they were asked for as one options object (``fabric/checkpoint/layouts.py``, ``options.py``).

DeepSpeed's layout round-trips on real engines in ``tests/strategies/deepspeed``; here only the choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric
from fabric.checkpoint.deepspeed_layout import DeepSpeedLayout
from fabric.checkpoint.layouts import FileLayout, ShardedLayout
from fabric.checkpoint.options import LoadOptions, SaveOptions
from fabric.strategies import FSDPStrategy, SingleDeviceStrategy
from tests.helpers import regression_data, tiny_mlp


class _RecordingStrategy(SingleDeviceStrategy):
    """The real single-device strategy; it keeps the options objects it is handed, then saves and loads as usual."""

    saved: SaveOptions | None = None
    loaded: LoadOptions | None = None

    def save_checkpoint(
        self, path: Any, state: dict[str, Any], filter: Any = None, options: Any = None
    ) -> None:
        self.saved = options
        super().save_checkpoint(path, state, filter, options)

    def load_checkpoint(
        self, path: Any, state: Any = None, strict: Any = None, weights_only: Any = None, options: Any = None
    ) -> Any:
        self.loaded = options
        return super().load_checkpoint(path, state, strict, weights_only, options)


def test_fabric_save_and_load_hand_the_pipeline_one_options_object(tmp_path: Path) -> None:
    strategy = _RecordingStrategy(device=torch.device("cpu"))
    fabric = Fabric(strategy=strategy)
    net = tiny_mlp()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(*regression_data(8)), batch_size=4))
    keep_first_layer = {"model": lambda key, _: key.startswith("0.")}
    path = tmp_path / "ckpt.pt"

    fabric.save(
        path, {"model": model, "optimizer": optimizer, "loader": loader, "step": 1}, filter=keep_first_layer
    )

    saved = strategy.saved
    assert isinstance(saved, SaveOptions)
    assert saved.filter is keep_first_layer and saved.per_rank_keys == ("loader",) and not saved.async_save
    assert [owner is model.module for owner in saved.owners.values()] == [True]
    assert sorted(torch.load(path)["model"]) == ["0.bias", "0.weight"]  # the filter reached the layout

    target = {"model": model, "step": 0}
    remainder = fabric.load(path, target, strict=False, restore_rng=False)

    loaded = strategy.loaded
    assert isinstance(loaded, LoadOptions)
    assert (loaded.strict, loaded.weights_only, loaded.restore_rng) == (False, True, False)
    # strict=False reached the layout: the model loads from a checkpoint that holds only its first layer
    assert target["step"] == 1 and "optimizer" in remainder


class _NamedLayout(SingleDeviceStrategy):
    def __init__(self, layout: str) -> None:
        super().__init__(device=torch.device("cpu"))
        self._layout = layout

    @property
    def checkpoint_layout(self) -> Any:
        return self._layout


@pytest.mark.parametrize(
    ("name", "layout"), [("file", FileLayout), ("sharded", ShardedLayout), ("deepspeed", DeepSpeedLayout)]
)
def test_the_pipeline_writes_the_layout_the_strategy_names(name: str, layout: type) -> None:
    assert type(_NamedLayout(name).checkpointer.layout()) is layout


def test_real_strategies_name_their_layout() -> None:
    assert type(SingleDeviceStrategy(device=torch.device("cpu")).checkpointer.layout()) is FileLayout
    assert type(FSDPStrategy(state_dict_type="sharded").checkpointer.layout()) is ShardedLayout
    assert type(FSDPStrategy(state_dict_type="full").checkpointer.layout()) is FileLayout
