"""`fabric port` on a program of several files: the entry script creates the Fabric object and hands it to
the modules it imports, whose DDP wrapping, backward, collectives and rank checks convert like a script's.

Checked in the converted code, and by running the original (under torchrun) and the converted pair (under
plain python and fabric's own launcher) on 1 and 2 processes: the same printed numbers, bit for bit.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("libcst")

from fabric.port import convert, convert_files
from tests.port.helpers import SCRIPTS, env, run

PROGRAM = SCRIPTS / "two_files"


def _sources(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*.py"))}


def _port_program(tmp_path: Path) -> tuple[dict[str, str], dict[str, tuple[str, object]], Path]:
    sources = _sources(PROGRAM)
    results = convert_files(sources)
    out = tmp_path / "port"
    out.mkdir()
    for name, (code, _) in results.items():
        (out / name).write_text(code)
    return sources, results, out


def test_two_files_convert_together(tmp_path: Path) -> None:
    sources, results, _ = _port_program(tmp_path)
    train, train_report = results["train.py"]
    loop, loop_report = results["loop.py"]
    # the entry script creates the Fabric object and hands it to the module right after the launch
    for line in (
        "import loop as loop_module  # added by `fabric port`\n",
        '    fabric = Fabric(strategy="ddp", devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1)), '
        'num_nodes=int(os.environ.get("GROUP_WORLD_SIZE", 1)))  # added by `fabric port`\n'
        "    fabric.launch()\n"
        "    loop_module.fabric = fabric  # added by `fabric port`: loop uses it\n"
        "    main()\n",
        "    fabric.seed_everything(seed, verbose=False)\n",
    ):
        assert line in train, line
    assert "init_process_group" not in train and "destroy_process_group" not in train
    # the module declares the name and uses it like a script would; its classes and signatures stay
    for line in (
        "from fabric import Fabric  # added by `fabric port`\n\n"
        "fabric: Fabric  # added by `fabric port`: set by train.py right after fabric.launch()\n",
        "        self.model = fabric.setup_module(model.to(self.device))\n",
        "        fabric.backward(loss)\n",
        '            total = fabric.all_reduce(total, reduce_op="sum")\n',
        "            if fabric.is_global_zero:\n                fabric.print(",
        "    def __init__(self, model, optimizer, dataset, snapshot):\n",
        "            self.sampler.set_epoch(epoch)\n",
    ):
        assert line in loop, line
    assert "DDP(" not in loop and "dist." not in loop
    assert not train_report.unconverted
    # every place left is listed: the device kept in an attribute, the snapshot saved as a variable (and
    # so its load), the final weights another program reads
    assert [(f.line, f.code.split("(")[0]) for f in loop_report.unconverted] == [
        (13, "self.device = torch.device"),
        (22, "torch.load"),
        (49, "torch.save"),
        (52, "torch.save"),
    ]
    # byte for byte outside the reported lines, no comment lost, and a second run changes nothing
    for name, (code, report) in results.items():
        converted = {f.line for f in report.converted}
        matcher = difflib.SequenceMatcher(a=sources[name].splitlines(), b=code.splitlines(), autojunk=False)
        for tag, i1, i2, _, _ in matcher.get_opcodes():
            if tag in ("replace", "delete"):
                assert set(range(i1 + 1, i2 + 1)) <= converted, (name, sources[name].splitlines()[i1:i2])
        comments = re.findall(r"#.*", sources[name])
        assert [c for c in re.findall(r"#.*", code) if c in comments] == comments
    again = convert_files({name: code for name, (code, _) in results.items()})
    assert {name: code for name, (code, _) in again.items()} == {
        name: code for name, (code, _) in results.items()
    }


@pytest.mark.timeout(420)
@pytest.mark.parametrize("nproc", [1, 2])
def test_converted_pair_prints_the_original_numbers(tmp_path: Path, nproc: int) -> None:
    """The original under torchrun; the port under plain python (1 process) or `fabric run` (2 processes).
    A second run resumes from the snapshot each wrote, with the same numbers again."""
    _, _, port = _port_program(tmp_path)
    original = tmp_path / "original"
    shutil.copytree(PROGRAM, original)
    launcher = "torchrun1" if nproc == 1 else "torchrun"
    ours_launcher = "torchrun" if nproc == 1 else "fabric"  # plain python for one process
    runs = [(), ("--resume", "--epochs", "1")] if nproc == 2 else [()]
    for args in runs:
        # one launch at a time: each needs both cores of this machine
        ours = _records(run(port / "train.py", *args, nproc=nproc, launcher=ours_launcher))
        theirs = _records(run(original / "train.py", *args, nproc=nproc, launcher=launcher, reference=True))
        epochs = 1 if args else 2
        assert len(theirs) == epochs + nproc, theirs
        assert ours == theirs
    assert (port / "final.pt").exists()


def _records(lines: list[str]) -> list[str]:
    """The printed records of every rank, sorted: the ranks share one stdout."""
    return sorted(re.findall(r"(?:epoch \d+ world \d+ loss|rank \d weight sum) -?[0-9.]+", "\n".join(lines)))


# ------------------------------------------------------------------------------ where the tool holds back
_ENTRY = "import torch\nfrom helper import step\n\n{body}\n\nif __name__ == '__main__':\n    main()\n"
_MAIN = "def main():\n    torch.manual_seed(0)\n    step(torch.nn.Linear(2, 1), torch.ones(3, 2))\n"
_HELPER = "import torch\n\n\ndef step(model, x):\n    loss = model(x).sum()\n    loss.backward()\n"


def test_module_alone_or_without_its_script_is_left_whole() -> None:
    alone = convert_files({"helper.py": _HELPER})["helper.py"]
    assert alone[0] == _HELPER
    assert "no script among the given files imports" in alone[1].unconverted[0].reason
    assert "entry point" in convert(_HELPER)[1].unconverted[0].reason  # one file: as before


@pytest.mark.parametrize(
    ("helper", "entry_body", "why"),
    [
        (_HELPER + "\nX = torch.ones(1).cuda()\n", _MAIN, "runs when it is imported"),
        (_HELPER.replace("import torch\n", "import torch\nfabric = None\n"), _MAIN, "for something else"),
        (
            _HELPER.replace("    loss.backward()", "    with torch.autocast('cpu', dtype=torch.bfloat16):\n"
                            "        loss.backward()"),
            "use_amp = True\n\n\n" + _MAIN
            + "    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=use_amp):\n        pass\n",
            "switches its precision with 'use_amp'",
        ),
        (_HELPER, _MAIN.replace("def main():", "import torch.multiprocessing as mp\n\n\ndef main():")
         + "    mp.spawn(main, nprocs=2)\n", "entry script main.py was left whole"),
        (_HELPER + "\n\nif __name__ == '__main__':\n    step(torch.nn.Linear(2, 1), torch.ones(1, 2).cuda())\n",
         _MAIN, "its own `__main__` block uses `fabric`"),
    ],
    ids=["runs-at-import", "own-name", "other-precision", "entry-left-whole", "own-main-block"],
)  # fmt: skip
def test_module_that_cannot_get_the_fabric_object_is_left_whole(
    helper: str, entry_body: str, why: str
) -> None:
    results = convert_files({"main.py": _ENTRY.format(body=entry_body), "helper.py": helper})
    code, report = results["helper.py"]
    assert code == helper
    assert any(why in f.reason for f in report.unconverted), report.text()
    assert "helper_module" not in results["main.py"][0]


def test_precision_and_package_modules_reach_the_entry_script() -> None:
    """A bf16 autocast proven in a module makes the entry's Fabric bf16-mixed; a module imported through a
    package (and its relative import) gets the object too, under a name free in the script."""
    helper = _HELPER.replace(
        "    loss = model(x).sum()",
        "    with torch.autocast('cpu', dtype=torch.bfloat16):\n        loss = model(x).sum()",
    )
    sources = {
        "main.py": "import torch\nfrom pkg.loop import run\n\n\ndef main():\n    pkg_helper_module = 1\n    run()\n"
        "\n\nif __name__ == '__main__':\n    main()\n",
        "pkg/__init__.py": "",
        # a module that runs something when imported is still a module
        "pkg/loop.py": "import logging\n\nimport pkg.extra\n\nfrom .helper import step\n\nlogging.basicConfig()\n\n\n"
        "def run():\n    step(None, None)\n",
        # imported by its absolute name, which resolves from the script's folder
        "pkg/extra.py": "import torch\n\n\ndef to_device(x):\n    return x.cuda()\n",
        "pkg/helper.py": helper,
        "unrelated.py": _HELPER,
    }
    results = convert_files(sources)
    main = results["main.py"][0]
    assert 'fabric = Fabric(devices=1, precision="bf16-mixed")' in main
    # `pkg_helper_module` is a variable of the script: the module gets the next free name
    assert "import pkg.helper as pkg_helper_module2  # added by `fabric port`" in main
    assert "    pkg_helper_module2.fabric = fabric  # added by `fabric port`: pkg.helper uses it" in main
    assert "    pkg_extra_module.fabric = fabric" in main
    assert "pkg.loop as" not in main  # pkg/loop.py uses no fabric
    assert "with fabric.autocast():" in results["pkg/helper.py"][0]
    assert results["pkg/loop.py"][0] == sources["pkg/loop.py"]
    assert results["unrelated.py"][0] == _HELPER  # nothing imports it: left whole
    assert convert_files({k: c for k, (c, _) in results.items()})["main.py"][0] == main


# ------------------------------------------------------------------------------------------- the CLI
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric.cli", "port", *args],
        cwd=cwd, env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_converts_a_folder_or_several_files(tmp_path: Path) -> None:
    expected = {name: code for name, (code, _) in convert_files(_sources(PROGRAM)).items()}
    done = _cli(str(PROGRAM), "-o", str(tmp_path / "a"), "--check", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # places are left in loop.py
    assert _sources(tmp_path / "a") == expected
    assert "== loop.py ==" in done.stderr and "line 49: left as is: torch.save" in done.stderr

    files = [str(PROGRAM / "train.py"), str(PROGRAM / "loop.py")]
    done = _cli(*files, "-o", str(tmp_path / "b"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _sources(tmp_path / "b") == expected
    diff = _cli(*files, "--diff", cwd=tmp_path)
    assert "+    loop_module.fabric = fabric" in diff.stdout and "-        loss.backward()" in diff.stdout

    # a port written inside the folder is not read back as input by the next run
    copy = tmp_path / "copy"
    shutil.copytree(PROGRAM, copy)
    for _ in range(2):
        assert _cli(str(copy), "-o", str(copy / "ported"), cwd=tmp_path).returncode == 0
    assert _sources(copy / "ported") == expected

    nowhere = _cli(*files, cwd=tmp_path)
    assert nowhere.returncode == 2 and "pass -o OUTDIR" in nowhere.stderr
    onto_itself = _cli(str(PROGRAM), "-o", str(PROGRAM), cwd=tmp_path)
    assert onto_itself.returncode == 2 and "would overwrite them" in onto_itself.stderr
