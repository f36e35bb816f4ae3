"""The porting guide's legacy script, converted by `fabric port` with no hand edits, trains to the hand
port's numbers: the same printed losses and bit-identical final weights, on one process and on two
(the conversion under torchrun, the hand port under fabric's own launcher)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("libcst")

from fabric import Fabric
from fabric.port import convert
from tests.port.helpers import ROOT, run_both

PORTING = ROOT / "examples" / "porting"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("devices", [1, 2])
def test_converted_legacy_script_matches_the_hand_port(tmp_path: Path, devices: int) -> None:
    code, report = convert((PORTING / "legacy_train.py").read_text())
    converted = tmp_path / "legacy_train_fabric.py"
    converted.write_text(code)
    # what the tool leaves (the dynamic AMP switch, the GradScaler, torch.save/load) is listed
    assert {f.code.split("(")[0] for f in report.unconverted} >= {
        "torch.amp.GradScaler",
        "torch.autocast",
        "torch.save",
    }

    common = ("--epochs", "2", "--seed", "0")
    hand_port = (PORTING / "fabric_train.py", "--accelerator", "cpu", "--devices", str(devices), *common)
    if devices == 1:
        ours, theirs = run_both(
            (converted, *common, "--out", str(tmp_path / "ours")),
            (*hand_port, "--out", str(tmp_path / "hand")),
        )
    else:
        # one launch at a time: torchrun's 2 processes and the hand port's 2 need the 2 cores each
        from tests.port.helpers import run

        ours = run(converted, *common, "--out", str(tmp_path / "ours"), nproc=2)
        theirs = run(*hand_port, "--out", str(tmp_path / "hand"))
    epochs = [line for line in theirs if line.startswith("epoch")]
    assert len(epochs) == 2
    assert [line for line in ours if line.startswith("epoch")] == epochs

    expected = Fabric(accelerator="cpu").load(tmp_path / "hand" / "checkpoint.pt")["model"]
    actual = torch.load(tmp_path / "ours" / "checkpoint.pt", weights_only=True)["model"]
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
