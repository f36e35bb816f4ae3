"""`fabric port`: each pattern on a script written for these tests, checked in the converted code and by
running the original and the conversion side by side (one process; two under torchrun for DDP).

The promise under test: what is converted prints the original's numbers, bit for bit; what is not
converted is left byte for byte and listed in the report; a second run changes nothing.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("libcst")

from fabric.port import convert
from tests.port.helpers import ROOT, SCRIPTS, env, run_both

ALL_SCRIPTS = sorted(SCRIPTS.glob("*.py"))


def _port(name: str, tmp_path: Path) -> tuple[str, str, object, Path]:
    source = (SCRIPTS / name).read_text()
    code, report = convert(source)
    path = tmp_path / name
    path.write_text(code)
    return source, code, report, path


def _left_lines(report) -> set[int]:  # type: ignore[no-untyped-def]
    return {finding.line for finding in report.unconverted}


# ----------------------------------------------------------------------- properties of every conversion
@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.stem)
def test_conversion_is_idempotent_parses_and_touches_only_reported_lines(script: Path) -> None:
    source = script.read_text()
    code, report = convert(source)
    compile(code, str(script), "exec")
    assert convert(code)[0] == code
    # every original line that changed or vanished is one the report names as converted
    converted = {finding.line for finding in report.converted}
    matcher = difflib.SequenceMatcher(a=source.splitlines(), b=code.splitlines(), autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            assert set(range(i1 + 1, i2 + 1)) <= converted, (tag, source.splitlines()[i1:i2])
    # no comment is lost
    comments = re.findall(r"#.*", source)
    assert [c for c in re.findall(r"#.*", code) if c in comments] == comments


def test_import_fabric_does_not_import_libcst() -> None:
    check = "import sys, fabric; assert 'libcst' not in sys.modules and 'fabric.port' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], env=env(), check=True, timeout=120)


# ------------------------------------------------------------------------------------ one per pattern
def test_device_selection_and_moves(tmp_path: Path) -> None:
    _, code, report, path = _port("device_moves.py", tmp_path)
    assert "device = fabric.device  # the device, by hand" in code
    assert "model = model.to(fabric.device)" in code
    assert "x = x.to(fabric.device, non_blocking=True)" in code
    assert ".to(device)" in code  # left alone: `device` is now Fabric's
    assert "fabric = Fabric(devices=1)" in code
    # the --no-cuda flag no longer picks the device: reported, not removed
    assert [f.line for f in report.unconverted] == [9]
    converted, original = run_both((path,), (SCRIPTS / "device_moves.py",))
    assert converted == original


def test_backward_in_an_lbfgs_closure_of_a_flat_script(tmp_path: Path) -> None:
    _, code, report, path = _port("lbfgs_closure.py", tmp_path)
    assert "    fabric.backward(loss)  # inside the optimizer's closure" in code
    # no __main__ block: the Fabric object is made right after the imports
    assert code.index("fabric = Fabric(devices=1)") < code.index("fabric.seed_everything(0, verbose=False)")
    assert not report.unconverted
    converted, original = run_both((path,), (SCRIPTS / "lbfgs_closure.py",))
    assert converted == original


def test_bf16_autocast_becomes_the_precision_setting(tmp_path: Path) -> None:
    _, code, report, path = _port("bf16_autocast.py", tmp_path)
    assert "with fabric.autocast():" in code and "torch.autocast" not in code
    assert 'Fabric(devices=1, precision="bf16-mixed")' in code
    assert not report.unconverted
    converted, expected = run_both((path,), (SCRIPTS / "bf16_autocast.py",))
    assert "dtype torch.bfloat16" in expected[0]
    assert converted == expected


def test_grad_scaler_is_left_and_every_call_reported(tmp_path: Path) -> None:
    source, code, report, path = _port("grad_scaler.py", tmp_path)
    for line in ("scaler.scale(loss).backward()", "scaler.step(optimizer)", "scaler.update()", "torch.save("):
        assert line in code
    lines = source.splitlines()
    left = {lines[n - 1].strip() for n in _left_lines(report)}
    assert {
        'scaler = torch.amp.GradScaler("cpu")',
        'with torch.autocast("cpu", dtype=torch.float16):',
        "scaler.scale(loss).backward()",
        "scaler.unscale_(optimizer)",
        "scaler.step(optimizer)",
        "scaler.update()",
        'torch.save(model.state_dict(), "model.pt")',
    } <= left
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    converted, original = run_both(
        (path,), (SCRIPTS / "grad_scaler.py",), cwds=(tmp_path / "a", tmp_path / "b")
    )
    assert converted == original


def test_seed_is_left_where_numpy_would_be_reseeded(tmp_path: Path) -> None:
    source, code, report, _ = _port("seeded_numpy.py", tmp_path)
    assert code == source
    assert _left_lines(report) == {7}


def test_spawn_entry_point_is_left_whole(tmp_path: Path) -> None:
    source, code, report, _ = _port("spawn_entry.py", tmp_path)
    assert code == source
    assert not report.converted
    assert {11, 13, 16, 22} <= _left_lines(report)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("nproc", [1, 2])
def test_ddp_script_under_torchrun(tmp_path: Path, nproc: int) -> None:
    _, code, report, path = _port("ddp_torchrun.py", tmp_path)
    for line in (
        "model = fabric.setup_module(model)",
        'total = fabric.all_reduce(total, reduce_op="sum")',
        "world = fabric.world_size",
        "if fabric.is_global_zero:",
        'fabric.print(f"epoch',
        "fabric.barrier()",
        "fabric.backward(loss)",
        "sampler.set_epoch(epoch)",  # the DistributedSampler works unchanged under Fabric
    ):
        assert line in code, line
    assert "init_process_group" not in code and "destroy_process_group" not in code
    assert not report.unconverted
    converted, expected = run_both((path,), (SCRIPTS / "ddp_torchrun.py",), nproc=nproc)
    assert len(expected) == 2 + nproc
    assert sorted(converted) == sorted(expected)


# ------------------------------------------------------------------------------------------- the CLI
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric.cli", "port", *args],
        cwd=cwd, env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_output_diff_and_check(tmp_path: Path) -> None:
    out = tmp_path / "ported.py"
    done = _cli(str(SCRIPTS / "bf16_autocast.py"), "-o", str(out), "--check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == convert((SCRIPTS / "bf16_autocast.py").read_text())[0]
    assert "converted 3 place(s); left 0" in done.stderr

    diff = _cli(str(SCRIPTS / "device_moves.py"), "--diff", cwd=tmp_path)
    assert diff.returncode == 0
    assert "+    device = fabric.device  # the device, by hand" in diff.stdout
    assert "-    device = torch.device(" in diff.stdout

    check = _cli(str(SCRIPTS / "device_moves.py"), "--diff", "--check", cwd=tmp_path)
    assert check.returncode == 1
    assert "line 9: left as is" in check.stderr

    missing = _cli(str(tmp_path / "nope.py"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert ROOT.exists()


# ------------------------------------------------------------------------------ where the tool holds back
def test_device_used_as_text_is_left() -> None:
    source = (
        "import torch\n\n\ndef main():\n    acc = torch.device('cuda')\n    device = torch.device(f'{acc}:1')\n"
        "    x = torch.ones(1).to(device)\n    x.backward()\n\n\nif __name__ == '__main__':\n    main()\n"
    )
    code, report = convert(source)
    assert "acc = torch.device('cuda')" in code  # becomes 'cuda:0:1' if rewritten
    assert "device = fabric.device" in code  # used only as a device: rewritten
    assert [f.line for f in report.unconverted] == [5]


def test_a_module_without_entry_point_is_left_whole() -> None:
    source = "import torch\n\n\ndef step(model, x):\n    loss = model(x).sum()\n    loss.backward()\n"
    code, report = convert(source)
    assert code == source  # a Fabric created at its import would launch twice
    assert [f.line for f in report.unconverted] == [6]
    assert "entry point" in report.unconverted[0].reason


def test_untouched_source_and_comments_survive_byte_for_byte() -> None:
    source = "import torch  # keep\n\n\n# nothing to port here\nx = torch.ones(2)  ;  y = x * 2\n"
    assert convert(source) == (source, convert(source)[1])
    assert not convert(source)[1].findings


def test_seed_right_after_the_same_random_seed_is_converted() -> None:
    source = "import random\n\nimport torch\n\nrandom.seed(5)\ntorch.manual_seed(5)\nx = random.random()\n"
    code, report = convert(source)
    assert "fabric.seed_everything(5, verbose=False)" in code  # random is seeded with 5 again: same state
    assert not report.unconverted
    other = source.replace("torch.manual_seed(5)", "torch.manual_seed(6)")
    assert convert(other)[0] == other
