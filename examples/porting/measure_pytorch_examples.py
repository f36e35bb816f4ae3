"""Measure `fabric port` on scripts nobody here wrote: the pytorch/examples repository.

Give it a checkout of https://github.com/pytorch/examples (nothing of it is copied into this repo):

    python examples/porting/measure_pytorch_examples.py /path/to/examples --out port-results.md
    python examples/porting/measure_pytorch_examples.py /path/to/examples --vision-python /venv/bin/python

For each script it copies the script's folder to a temporary directory twice, converts the script in
the second copy with `fabric port` (no hand edits; a program of several files, minGPT-ddp's `main.py`
and `trainer.py`, is converted together), runs both copies the same way, and compares the lines
that carry numbers (losses, accuracies) and, for the DDP tutorials, the saved weights. Both runs go
through the same small runner (`_SHIM` below), which makes them runnable offline on a CPU:
torchvision's MNIST and ImageNet-sized `FakeData` become small `FakeData` sets, the process group uses
gloo, integer CUDA device indices mean the CPU, and torch is seeded before the script starts (the DDP
tutorial generates its data unseeded). The scripts that need torchvision run under `--vision-python`
(an environment with torch and torchvision that import together), the others under this Python.
minGPT-ddp exits unless an accelerator with 2 devices is present and builds `torch.device(f"{acc}:{rank}")`:
for it the runner reports the CPU as 2 accelerator devices (and turns off memory pinning, which would
then look for one); it needs `hydra-core`, `omegaconf`, `fsspec` and `boto3` on the caller's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fabric.port import convert_files  # noqa: E402

#: the runner both the original and the converted script start through (identical for both)
_SHIM = r"""
import os, runpy, sys
import torch
torch.manual_seed(0)
if os.environ.get("SHIM_CPU"):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.cuda.set_device = lambda *a, **k: None
    _init = dist.init_process_group
    def _gloo(*args, **kwargs):
        kwargs["backend"] = "gloo"
        return _init(*args[1:], **kwargs) if args else _init(**kwargs)
    dist.init_process_group = _gloo
    _tensor_to, _module_to = torch.Tensor.to, torch.nn.Module.to
    def _cpu(args):
        return tuple("cpu" if isinstance(a, int) and not isinstance(a, bool) else a for a in args)
    torch.Tensor.to = lambda self, *a, **k: _tensor_to(self, *_cpu(a), **k)
    torch.nn.Module.to = lambda self, *a, **k: _module_to(self, *_cpu(a), **k)
    _ddp_init = DistributedDataParallel.__init__
    def _ddp(self, module, *args, **kwargs):
        kwargs.pop("device_ids", None)
        _ddp_init(self, module, *args, **kwargs)
    DistributedDataParallel.__init__ = _ddp
if os.environ.get("SHIM_CPU_ACCEL"):
    # a script that insists on an accelerator (minGPT-ddp): the CPU reported as N devices, one per process
    torch.accelerator.is_available = lambda: True
    torch.accelerator.device_count = lambda: int(os.environ["SHIM_CPU_ACCEL"])
    torch.accelerator.current_accelerator = lambda *a, **k: torch.device("cpu")
    torch.accelerator.set_device_index = lambda *a, **k: None
    _loader_init = torch.utils.data.DataLoader.__init__
    def _no_pin(self, *args, **kwargs):  # pinning would now look for the accelerator; it changes no number
        kwargs["pin_memory"] = False
        _loader_init(self, *args, **kwargs)
    torch.utils.data.DataLoader.__init__ = _no_pin
if os.environ.get("SHIM_FAKE_SIZE"):
    import torchvision.datasets as datasets
    size = int(os.environ["SHIM_FAKE_SIZE"])
    _fake = datasets.FakeData
    class SmallFake(_fake):
        def __init__(self, size_=1000, image_size=(3, 224, 224), num_classes=10, transform=None, *a, **k):
            super().__init__(min(size_, size), image_size, num_classes, transform, *a, **k)
    datasets.FakeData = SmallFake
    def mnist(root, train=True, download=False, transform=None, **kwargs):
        return _fake(size, (1, 28, 28), 10, transform, random_offset=0 if train else 10**6)
    datasets.MNIST = mnist
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"""

_NUMBERS = re.compile(r"loss|Loss|acc|Accuracy|ppl|Epoch|epoch|Acc@")
#: wall-clock figures differ between any two runs: removed before comparing
_TIMES = re.compile(r"(?i)(time|data|ms/batch|lr)[:\s]+[\d.e+-]+s?(\s*\(\s*[\d.e+-]+\))?")


@dataclass
class Case:
    name: str
    folder: str
    script: str
    args: list[str]
    vision: bool = False
    cpu_shim: bool = False
    nproc: tuple[int, ...] = (1,)  # 1 = plain python; 2 = torchrun with 2 processes
    torchrun_only: bool = False  # the script reads torchrun's variables even on one process
    nodes: int = 1
    snapshot: str | None = None  # a file both runs write whose tensors must match
    not_runnable: str = ""
    cpu_accel: int = 0  # report the CPU as this many accelerator devices (scripts that exit without GPUs)
    extra: list[str] = field(default_factory=list)  # further files of the program, converted together
    fake_size: int = 64  # images per torchvision FakeData/MNIST stand-in


CASES = [
    Case(
        "mnist/main.py",
        "mnist",
        "main.py",
        ["--epochs", "1", "--log-interval", "2"],
        vision=True,
        fake_size=640,
    ),
    Case(
        "imagenet/main.py --dummy",
        "imagenet",
        "main.py",
        ["--dummy", "-a", "resnet18", "--epochs", "1", "-b", "8", "--workers", "0", "--print-freq", "1"],
        vision=True,
    ),
    Case(
        "dcgan/main.py --dataset fake",
        "dcgan",
        "main.py",
        [
            "--dataset",
            "fake",
            "--niter",
            "1",
            "--batchSize",
            "8",
            "--workers",
            "0",
            "--manualSeed",
            "1",
            "--ngf",
            "16",
            "--ndf",
            "16",
        ],
        vision=True,
    ),
    Case(
        "word_language_model/main.py",
        "word_language_model",
        "main.py",
        [
            "--data",
            "{work}/data/wikitext-2",
            "--epochs",
            "1",
            "--nhid",
            "16",
            "--emsize",
            "16",
            "--bptt",
            "10",
        ],
        snapshot="model.pt",
    ),
    Case(
        "ddp-tutorial-series/multigpu_torchrun.py",
        "distributed/ddp-tutorial-series",
        "multigpu_torchrun.py",
        ["2", "1", "--batch_size", "64"],
        cpu_shim=True,
        nproc=(1, 2),
        torchrun_only=True,
        snapshot="snapshot.pt",
    ),
    Case(
        "ddp-tutorial-series/multinode.py",
        "distributed/ddp-tutorial-series",
        "multinode.py",
        ["2", "1", "--batch_size", "64"],
        cpu_shim=True,
        nproc=(1, 2),
        torchrun_only=True,
        nodes=2,
        snapshot="snapshot.pt",
    ),
    Case(
        "minGPT-ddp (mingpt/main.py, trainer.py)",
        "distributed/minGPT-ddp/mingpt",
        "main.py",
        # hydra overrides: the text the example ships (not its URL), a 1-layer 32-wide model, 1 epoch, fp32
        [
            "data_config.path=../../src/data/input.txt",
            "data_config.truncate=0.004",
            "data_config.block_size=32",
            "gpt_config.n_layer=1",
            "gpt_config.n_head=2",
            "gpt_config.n_embd=32",
            "trainer_config.max_epochs=1",
            "trainer_config.batch_size=32",
            "trainer_config.data_loader_workers=0",
            "trainer_config.use_amp=False",
            "trainer_config.save_every=1",
        ],
        cpu_shim=True,
        cpu_accel=2,
        nproc=(1, 2),
        torchrun_only=True,
        snapshot="gpt_snapshot.pt",
        extra=["trainer.py"],
    ),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case: Case, python: str, script: Path, nproc: int, cwd: Path) -> tuple[list[str], str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))
    }
    # the caller's PYTHONPATH stays: minGPT-ddp needs hydra-core, omegaconf, fsspec and boto3 from it
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if case.cpu_shim:
        env["SHIM_CPU"] = "1"
    if case.cpu_accel:
        env["SHIM_CPU_ACCEL"] = str(case.cpu_accel)
    if case.vision:
        env["SHIM_FAKE_SIZE"] = str(case.fake_size)
    args = [arg.replace("{work}", str(script.parent)) for arg in case.args]
    shim = cwd / "_shim.py"
    shim.write_text(_SHIM)
    runs = []
    if nproc == 1 and not case.torchrun_only:
        runs.append([python, str(shim), str(script), *args])
    else:
        port = _port()
        nodes = case.nodes if nproc > 1 else 1
        for node in range(nodes):
            runs.append(
                [python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node-rank={node}",
                 f"--nproc-per-node={nproc // nodes}", "--master-addr=127.0.0.1", f"--master-port={port}",
                 "--", str(shim), str(script), *args]
            )  # fmt: skip
    dirs = [cwd / f"node{n}" for n in range(len(runs))]
    procs = []
    for command, folder in zip(runs, dirs):
        folder.mkdir(exist_ok=True)
        procs.append(
            subprocess.Popen(
                command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    out, err = [], ""
    for proc in procs:
        o, e = proc.communicate(timeout=900)
        # torchrun runs Python unbuffered: one rank's text can run into the other's ("...3.97828[RANK1] ...")
        out += [part for line in o.splitlines() for part in re.split(r"(?<=\d)(?=\[)", line) if part]
        if proc.returncode:
            err += f"exit {proc.returncode}: {e.strip().splitlines()[-1] if e.strip() else ''}"
    return out, err


def _same_snapshot(a: Path, b: Path, source: Path) -> str:
    import torch

    sys.path.insert(0, str(source))  # a pickled module is rebuilt from the script's own files

    if not a.exists() or not b.exists():
        return "no snapshot"

    def tensors(path: Path) -> dict:
        # the DDP tutorial saves {"MODEL_STATE": ...}, minGPT {"model_state": ...}; the language model
        # pickles the whole module
        saved = torch.load(path, weights_only=False)
        if isinstance(saved, dict):
            return saved.get("MODEL_STATE", saved.get("model_state"))
        return saved.state_dict()

    sa, sb = tensors(a), tensors(b)
    same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    return "weights bit-identical" if same else "weights DIFFER"


def measure(checkout: Path, vision_python: str | None, only: list[str]) -> list[dict[str, str]]:
    rows = []
    for case in CASES:
        if only and not any(word in case.name for word in only):
            continue
        row = {"script": case.name}
        with tempfile.TemporaryDirectory() as tmp:
            work, ported = Path(tmp) / "src", Path(tmp) / "port"
            shutil.copytree(checkout / case.folder, work)
            data = work / "data" / "wikitext-2"
            if data.exists() and (
                not (data / "train.txt").exists() or (data / "train.txt").stat().st_size == 0
            ):
                # a checkout without the large training file: the validation text stands in, for both runs
                shutil.copy(data / "valid.txt", data / "train.txt")
                row["note"] = "train.txt missing in the checkout: valid.txt used as training text (both runs)"
            shutil.copytree(work, ported)
            reports = []
            names = (case.script, *case.extra)
            converted = convert_files({name: (work / name).read_text() for name in names})
            for name, (code, report) in converted.items():
                (ported / name).write_text(code)
                changed = code != (work / name).read_text()
                reports.append((name, changed, report))
            row["converted"] = "; ".join(
                f"{n}: {len(r.converted)} rewrites{'' if changed else ' (file unchanged)'}"
                for n, changed, r in reports
            )
            row["report"] = "; ".join(
                f"{n}: " + (", ".join(sorted({_kind(f.code) for f in r.unconverted})) or "nothing")
                for n, _, r in reports
            )
            if case.not_runnable:
                row["1 process"] = row["2 processes"] = f"not run: {case.not_runnable}"
                rows.append(row)
                continue
            python = vision_python if case.vision else sys.executable
            if case.vision and not python:
                row["1 process"] = "not run: needs --vision-python (torchvision does not import here)"
                rows.append(row)
                continue
            for nproc in case.nproc:
                key = "1 process" if nproc == 1 else "2 processes"
                results = {}
                for kind, script in (("original", work / case.script), ("port", ported / case.script)):
                    cwd = Path(tmp) / f"{kind}{nproc}"
                    cwd.mkdir()
                    out, err = _run(case, python, script, nproc, cwd)
                    results[kind] = (
                        [_TIMES.sub("", line) for line in out if _NUMBERS.search(line)],
                        err,
                        cwd,
                    )
                (orig, oerr, ocwd), (port, perr, pcwd) = results["original"], results["port"]
                if oerr or perr:
                    row[key] = f"original: {oerr or 'ok'}; port: {perr or 'ok'}"
                    continue
                verdict = (
                    "same printed numbers"
                    if sorted(orig) == sorted(port) and orig
                    else "printed numbers DIFFER"
                )
                if orig and sorted(orig) != sorted(port):
                    first = next(((a, b) for a, b in zip(sorted(orig), sorted(port)) if a != b), ("", ""))
                    verdict += f" (first: {first[0].strip()!r} vs {first[1].strip()!r})"
                if not orig:
                    verdict = "no numbers printed"
                if case.snapshot:
                    verdict += ", " + _same_snapshot(
                        ocwd / "node0" / case.snapshot, pcwd / "node0" / case.snapshot, work
                    )
                row[key] = f"{verdict} ({len(orig)} lines)"
        rows.append(row)
        print(row, flush=True)
    return rows


def _kind(code: str) -> str:
    return re.sub(r"\(.*", "(...)", code).strip()[:60]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/pytorch/examples")
    parser.add_argument(
        "--vision-python", default=None, help="a Python whose torch and torchvision import together"
    )
    parser.add_argument(
        "--only", nargs="*", default=[], help="measure only the scripts whose name contains one of these"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args()
    rows = measure(args.checkout, args.vision_python, args.only)
    columns = ["script", "converted", "1 process", "2 processes", "report", "note"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "").replace("|", "/") for c in columns) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
