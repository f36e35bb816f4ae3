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

from fabric.environments import find_free_network_port
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


def test_grad_scaler_and_float16_autocast_become_16_mixed(tmp_path: Path) -> None:
    # Fabric's "16-mixed" on the CPU is float16 autocast with torch.amp.GradScaler("cpu"), the same as the
    # original: the numbers compare bit for bit, including the step whose gradients overflow and are skipped
    _, code, report, path = _port("grad_scaler.py", tmp_path)
    for line in (
        'fabric = Fabric(devices=1, precision="16-mixed")',
        "    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "    optimizer = fabric.setup_optimizers(optimizer)\n",
        "with fabric.autocast():",
        "        fabric.backward(loss)\n"
        "        # clip the true gradients, not the scaled ones\n"
        "        norm = fabric.clip_gradients(model, optimizer, max_norm=1.0)\n"
        "        optimizer.step()\n"
        "        optimizer.zero_grad()\n",
    ):
        assert line in code, line
    assert not re.search(r"^ +(scaler|with torch.autocast)", code, re.M)
    assert [f.code for f in report.unconverted] == ['torch.save(model.state_dict(), "model.pt")']
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    converted, original = run_both(
        (path,), (SCRIPTS / "grad_scaler.py",), cwds=(tmp_path / "a", tmp_path / "b")
    )
    assert "norm nan" in original[2] and original[1].split("weight")[1] == original[2].split("weight")[1]
    assert converted == original


_SCALER_LOOP = """import torch

model = torch.nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cuda"{options})
for x in torch.randn(3, 4, 2):
    with torch.autocast("cuda"):
        loss = model(x).sum()
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    {clip}
    scaler.step(opt)
    scaler.update()
{after}"""


@pytest.mark.parametrize(
    ("options", "clip", "after"),
    [
        (", init_scale=1024", "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)", ""),  # not Fabric's
        (
            "",
            "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
            "torch.save(scaler.state_dict(), 'x')",
        ),
        ("", "torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)", ""),  # unscaled for another reason
        ("", "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=False)", ""),
    ],
    ids=["options", "scaler-state", "clip-by-value", "clip-options"],
)
def test_grad_scaler_outside_the_proven_loop_is_left(options: str, clip: str, after: str) -> None:
    source = _SCALER_LOOP.format(options=options, clip=clip, after=after)
    code, report = convert(source)
    for line in source.splitlines()[4:13]:
        if "scaler" in line or "autocast" in line:
            assert line in code
    assert {5, 7, 9, 10, 12, 13} <= _left_lines(report)
    assert "precision=" not in code


@pytest.mark.parametrize("use_amp", [True, False])
def test_grad_scaler_switched_by_a_module_level_flag(tmp_path: Path, use_amp: bool) -> None:
    # the recipe's `enabled=use_amp`: "16-mixed" when on, "32-true" (no autocast, no scaling) when off
    source = (SCRIPTS / "grad_scaler_flag.py").read_text().replace("use_amp = True", f"use_amp = {use_amp}")
    original = tmp_path / "original.py"
    original.write_text(source)
    code, report = convert(source)
    assert 'fabric = Fabric(devices=1, precision="16-mixed" if use_amp else "32-true")' in code
    assert "with fabric.autocast():" in code and "optimizer = fabric.setup_optimizers(optimizer)" in code
    assert not report.unconverted
    path = tmp_path / "converted.py"
    path.write_text(code)
    converted, expected = run_both((path,), (original,))
    assert f"amp {use_amp}" in expected[0]
    assert converted == expected


_FLAG_IN_MAIN = """import argparse

import torch


def main():
    amp = argparse.ArgumentParser().parse_args().amp
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    for x in torch.randn(3, 4, 2):
        with torch.autocast("cuda", enabled=amp):
            loss = model(x).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize(
    "source",
    [
        _FLAG_IN_MAIN,  # known only inside main(): not where the Fabric object is made
        _FLAG_IN_MAIN.replace("    amp = argparse", "    amp = 1\n    amp2 = argparse"),  # local again
        # a flat script: the Fabric object is made after the imports, before `amp` is set
        _SCALER_LOOP.format(
            options=", enabled=amp", clip="torch.nn.utils.clip_grad_norm_(model.parameters(), 1)", after=""
        )
        .replace("import torch\n", "import torch\namp = True\n")
        .replace('torch.autocast("cuda")', 'torch.autocast("cuda", enabled=amp)'),
    ],
    ids=["flag-in-main", "flag-local", "flag-after-creation"],
)
def test_grad_scaler_flag_that_cannot_be_read_where_fabric_is_made_is_left(source: str) -> None:
    code, report = convert(source)
    assert "precision=" not in code and "fabric.backward" not in code
    assert report.unconverted


def test_grad_scaler_loop_under_a_default_cuda_autocast_converts() -> None:
    source = _SCALER_LOOP.format(
        options="", clip="torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=1)", after=""
    )
    code, report = convert(source)
    assert "fabric.clip_gradients(model, opt, max_norm=1.0, norm_type=1)" in code
    assert 'fabric = Fabric(devices=1, precision="16-mixed")' in code
    assert "opt = fabric.setup_optimizers(opt)" in code
    assert not report.unconverted


def test_checkpoint_read_back_by_the_script_becomes_fabric_save_and_load(tmp_path: Path) -> None:
    # the script writes ckpt.pt and, with --resume, reads it back: both calls convert, the dict stays as written
    _, code, report, path = _port("checkpoint_resume.py", tmp_path)
    assert "checkpoint = fabric.load(path, weights_only=True, restore_rng=False)" in code
    assert (
        'fabric.save(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step})'
        in code
    )
    assert "torch.save" not in code and "torch.load" not in code
    assert not report.unconverted
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cwds = (tmp_path / "a", tmp_path / "b")
    original = SCRIPTS / "checkpoint_resume.py"
    first = run_both((path,), (original,), cwds=cwds)
    # each resumes from its own checkpoint: the converted one from the file fabric.save wrote
    second = run_both((path, "--resume"), (original, "--resume"), cwds=cwds)
    assert first[0] == first[1] and second[0] == second[1]
    assert [line.split()[1] for line in first[0] + second[0]] == ["0", "1", "2", "3", "4", "5"]


_CHECKPOINTS = """import torch
import torch.distributed as dist

dist.init_process_group("gloo")
model = torch.nn.Linear(2, 1)
if dist.get_rank() == 0:
    torch.save({"model": model.state_dict()}, "a.pt")
model.load_state_dict(torch.load("a.pt")["model"])
torch.save({"model": model.state_dict()}, "b.pt")
model.load_state_dict(torch.load("b.pt", map_location="cpu")["model"])
torch.save(model.state_dict(), "c.pt")
model.load_state_dict(torch.load("c.pt"))
torch.save({"model": model.state_dict()}, "d.pt")
model.load_state_dict(torch.load("e.pt")["model"])
if dist.get_rank() == 0:
    torch.save({"model": model.state_dict()}, "f.pt")
    print("saved")
model.load_state_dict(torch.load("f.pt")["model"])
"""


def test_checkpoint_not_provably_read_by_the_script_alone_is_left() -> None:
    # map_location, a non-dict state, paths only written or only read, a rank check holding more than the save
    code, report = convert(_CHECKPOINTS)
    # the rank-0 check that holds only the save is dropped: fabric.save is collective and writes on rank 0
    assert '\nfabric.save("a.pt", {"model": model.state_dict()})\n' in code
    assert 'model.load_state_dict(fabric.load("a.pt", restore_rng=False)["model"])' in code
    assert code.count("fabric.save") == 1 and code.count("fabric.load") == 1
    assert {9, 10, 11, 12, 13, 14, 16, 18} <= _left_lines(report)
    assert not {6, 7, 8} & _left_lines(report)
    reasons = {f.line: f.reason for f in report.unconverted}
    assert "collective" in reasons[16] and "collective" in reasons[18]
    assert "map_location" in reasons[10] and "map_location" in reasons[9]
    assert "dict" in reasons[11]
    # in a one-process script a save under a condition that is not a rank check converts
    one_process = _CHECKPOINTS.replace('dist.init_process_group("gloo")\n', "")
    code, _ = convert(one_process.replace("if dist.get_rank() == 0:", "if model.bias.numel() == 1:"))
    assert '    fabric.save("f.pt", {"model": model.state_dict()})\n    print("saved")' in code
    code, report = convert(one_process)
    assert "collective" in {f.line: f.reason for f in report.unconverted}[15]


def test_seed_is_left_where_numpy_would_be_reseeded(tmp_path: Path) -> None:
    source, code, report, _ = _port("seeded_numpy.py", tmp_path)
    assert code == source
    assert _left_lines(report) == {7}


def test_spawn_entry_point_is_left_whole(tmp_path: Path) -> None:
    source, code, report, _ = _port("spawn_entry.py", tmp_path)
    assert code == source
    assert not report.converted
    assert {11, 13, 16, 22} <= _left_lines(report)
    assert any("an address of its own" in f.reason for f in report.unconverted if f.line == 22)


_SPAWN_SHAPE = """
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world_size):
    dist.init_process_group("gloo", rank=RANK, world_size=world_size)


if __name__ == "__main__":
    mp.spawn(worker, args=(2,), nprocs=NPROCS JOIN)
"""


@pytest.mark.parametrize(
    ("rank", "nprocs", "join", "why"),
    [
        ("rank + 1", "2", "", "rank is not the worker's first parameter"),
        ("rank", "3", "", "world size"),  # world_size=2 but 3 processes
        ("rank", "2", ", join=False", "join=False"),
    ],
)
def test_spawn_entry_point_in_another_shape_is_left_whole(
    rank: str, nprocs: str, join: str, why: str
) -> None:
    source = _SPAWN_SHAPE.replace("RANK", rank).replace("NPROCS", nprocs).replace(" JOIN", join)
    code, report = convert(source)
    assert code == source
    assert not report.converted
    assert any(why in f.reason for f in report.unconverted if "mp.spawn" in f.code)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("nproc", [1, 2])
def test_spawn_entry_point_becomes_fabric_launch(tmp_path: Path, nproc: int) -> None:
    """``mp.spawn(worker, args=(world_size, ...), nprocs=world_size)`` becomes a "ddp" Fabric of that many
    processes that calls the worker with its rank: same processes, same printed numbers on every rank."""
    _, code, report, path = _port("spawn_train.py", tmp_path)
    for line in (
        "global fabric  # added by `fabric port`",
        'fabric = Fabric(strategy="ddp", devices=world_size)',
        "fabric.launch()\n    worker(fabric.local_rank, world_size, 7)",
        "model = fabric.setup_module(torch.nn.Linear(8, 1))",
        "fabric.backward(loss)",
    ):
        assert line in code, line
    assert "mp.spawn(" not in code and "init_process_group" not in code
    assert not report.unconverted
    converted, expected = run_both(
        (path, str(nproc), str(find_free_network_port())),
        (SCRIPTS / "spawn_train.py", str(nproc), str(find_free_network_port())),
    )

    # several processes share one stdout: a print's text and its newline can be separate writes
    def records(lines: list[str]) -> list[str]:
        return sorted(p for line in lines for p in re.split(r"(?<=\d)(?=[a-z])", line) if p)

    assert len(records(expected)) == 6 * nproc
    assert records(converted) == records(expected)


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


@pytest.mark.timeout(300)
def test_rank_zero_checkpoint_under_torchrun_resumes(tmp_path: Path) -> None:
    # `if dist.get_rank() == 0:` holding only the save is dropped (fabric.save is collective, writes on rank 0)
    _, code, report, path = _port("ddp_checkpoint.py", tmp_path)
    assert '        state = fabric.load("ddp.pt", restore_rng=False)\n' in code
    assert '\n    fabric.save("ddp.pt", {"model": model.state_dict(),' in code
    assert "get_rank() == 0" not in code and "is_global_zero" not in code
    assert not report.unconverted
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cwds = (tmp_path / "a", tmp_path / "b")
    original = SCRIPTS / "ddp_checkpoint.py"
    first = [_records(out) for out in run_both((path,), (original,), nproc=2, cwds=cwds)]
    second = [
        _records(out) for out in run_both((path, "--resume"), (original, "--resume"), nproc=2, cwds=cwds)
    ]
    assert first[0] == first[1] and second[0] == second[1]
    assert len(second[0]) == 6 and any(line.startswith("rank 1 step 3 loss") for line in second[0])


def _records(lines: list[str]) -> list[str]:
    """The printed records of both ranks, sorted. torchrun runs Python unbuffered, so a print's text
    and its newline are two writes, and the ranks' lines can interleave on the shared pipe."""
    return sorted(re.findall(r"rank \d (?:step \d+ loss|weight sum) -?[0-9.]+", "\n".join(lines)))


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
