"""The XLA cells of the model matrix: tiny ``transformers`` models (GPT-2 with tied embeddings, Llama with
grouped-query attention and rotary buffers) on XLA's CPU back end, every check of the matrix.

Each cell is one run of ``scripts/xla_model_cell.py`` (one process: ``single_xla`` on 1 XLA device, or SPMD
``xla`` / ``xla_fsdp`` over 2) and one of ``tests/models/offline.py`` (a plain 1-process CPU run that loads the
XLA checkpoint, consolidates it and loads it into the library's class with ``from_pretrained``).

Tolerances against the eager CPU reference (the plain model, one process, same batches):
- float32: 1e-4 absolute on losses near 4. XLA's CPU back end fuses and reorders the reductions of
  attention, layer norms and the loss, so it is not bitwise equal to eager; Adam then turns those
  last-bit differences of the gradients into updates of up to the learning rate on the parameters where a
  gradient is close to zero, which the next steps' losses feel. Measured on 4 steps (all 12 cells, 2026-12-07):
  4.8e-7. Before the move to XLA kept GPT-2's head tied to its embedding, the head trained apart and GPT-2's
  losses left the reference by 1.5e-2, 4e-2, 5.4e-2 at steps 2-4.
- bf16-true: 5e-2, as in the matrix (one bf16 step near a loss of 4 is 2**-6 to 2**-5). Measured: up to 6.6e-3.
A resumed run must repeat the uninterrupted losses exactly; the 1-process load must give the saved weights
and AdamW state exactly; ``from_pretrained`` must give the logits of that load. ``init_module()`` and
``init_module(empty_init=True)`` must give the weights of the eager CPU construction under the same seed exactly
(before, 0.11 to 0.14 away: XLA's own generator, and no initialization under ``empty_init``).

Run by ``nox -s xla`` (four cells; ``FABRIC_XLA_MODELS=all`` runs all twelve,
``FABRIC_XLA_MODELS=gpt2-xla-bf16-true,...`` the cells named); skipped without torch-xla or
transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla", reason="needs torch-xla (nox -s xla)")
pytest.importorskip("transformers", reason="the model matrix needs transformers (nox -s xla installs it)")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CELL = HERE / "scripts" / "xla_model_cell.py"
OFFLINE = ROOT / "tests" / "models" / "offline.py"
#: every cell of the XLA matrix: (model, strategy, precision) -> XLA devices (CPU_NUM_DEVICES)
ALL_CELLS: dict[tuple[str, str, str], int] = {
    (model, strategy, precision): 1 if strategy == "single_xla" else 2
    for model in ("gpt2", "llama")
    for strategy in ("single_xla", "xla", "xla_fsdp")
    for precision in ("32-true", "bf16-true")
}
#: what `nox -s xla` runs by default: GPT-2's tied head on one device and under FSDPv2 (a ModelOutput through
#: the default output sharding), Llama under SPMD data parallel, and bf16-true. Each cell is about 1 CPU-minute,
#: mostly XLA compiling; the four together 3.7 CPU-minutes, run 2 at a time
DEFAULT_CELLS = (
    ("gpt2", "single_xla", "32-true"),
    ("gpt2", "xla_fsdp", "32-true"),
    ("llama", "xla", "32-true"),
    ("llama", "single_xla", "bf16-true"),
)


def _chosen_cells(choice: str | None) -> dict[tuple[str, str, str], int]:
    """``FABRIC_XLA_MODELS``: unset for the default cells, ``all``, or cell ids (``gpt2-xla-bf16-true,...``)."""
    if choice == "all":
        return ALL_CELLS
    if not choice:
        return {cell: ALL_CELLS[cell] for cell in DEFAULT_CELLS}
    by_id = {"-".join(cell): cell for cell in ALL_CELLS}
    unknown = [name for name in choice.split(",") if name not in by_id]
    if unknown:
        raise ValueError(
            f"FABRIC_XLA_MODELS={choice!r}: unknown cells {unknown}; allowed 'all' or {sorted(by_id)}"
        )
    return {by_id[name]: ALL_CELLS[by_id[name]] for name in choice.split(",")}


CELLS = _chosen_cells(os.environ.get("FABRIC_XLA_MODELS"))
TOLERANCE = {"32-true": 1e-4, "bf16-true": 5e-2}
#: cells at a time: each is mostly one core compiling
WORKERS = int(os.environ.get("FABRIC_XLA_TEST_WORKERS", "2"))
pytestmark = pytest.mark.timeout(1800)  # a loaded 2-core box compiles slowly


def _env(devices: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PJRT_", "CPU_NUM_DEVICES"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if devices is not None:
        env.update(PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(devices))
    return env


def _run(args: list[str], devices: int | None) -> None:
    proc = subprocess.run(
        [sys.executable, *args], env=_env(devices), capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, (
        f"`{' '.join(args)}`\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    )


def _cell(out: Path, cell: tuple[str, str, str], devices: int) -> dict[str, Any]:
    """The XLA run, then the 1-process CPU half; both results."""
    model, strategy, precision = cell
    _run([str(CELL), str(out), model, strategy, precision], devices)
    _run([str(OFFLINE), str(out), model, precision], None)
    return {
        "run": json.loads((out / "rank0.json").read_text()),
        "offline": json.loads((out / "offline.json").read_text()),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str, str], Future]]:
    """Every cell started at once, ``WORKERS`` at a time."""
    root = tmp_path_factory.mktemp("xla_models")
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {}
        for cell, devices in CELLS.items():
            out = root / "-".join(cell)
            out.mkdir()
            futures[cell] = pool.submit(_cell, out, cell, devices)
        yield futures


def _errors(*parts: dict[str, Any]) -> dict[str, str]:
    return {k: v["error"] for part in parts for k, v in part.items() if isinstance(v, dict) and "error" in v}


@pytest.mark.parametrize("cell", list(CELLS), ids=["-".join(c) for c in CELLS])
def test_xla_cell(results: dict[tuple[str, str, str], Future], cell: tuple[str, str, str]) -> None:
    precision = cell[2]
    outcome = results[cell].result()
    run, offline = outcome["run"], outcome["offline"]
    errors = _errors(run, offline)
    assert not errors, "\n".join(f"[{k}]\n{v}" for k, v in errors.items())
    assert run["num_devices"] == CELLS[cell]
    train, reference, tol = run["train"], run["reference_losses"], TOLERANCE[precision]
    # 1. per-step losses equal the eager CPU run's
    assert max(abs(a - b) for a, b in zip(train["losses"], reference)) < tol, (train["losses"], reference)
    # 2. exact mid-run resume
    assert train["resumed_losses"] == train["losses"][2:]
    # 3. generate() through mark_forward_method: the reference tokens (bf16 may round to another token)
    assert len(train["generated"][0]) == len(run["reference_generated"][0])
    if precision == "32-true":
        assert train["generated"] == run["reference_generated"]
    # 4. activation checkpointing: same losses
    checkpointing = run["checkpointing"]
    assert checkpointing["checkpointed"]
    assert max(abs(a - b) for a, b in zip(checkpointing["losses"], reference)) < tol
    # 5. one CPU process loads weights and optimizer state exactly; consolidate; from_pretrained
    load = offline["load"]
    assert load["param_diff"] == 0.0 and load["exp_avg_diff"] == 0.0
    assert load["step"] == 2
    pretrained = offline["from_pretrained"]
    assert pretrained["missing"] == [] and pretrained["unexpected"] == []
    assert pretrained["logits_diff"] < TOLERANCE[precision] / 10
    # against the XLA run's own logits at the save: the back ends differ in rounding only
    assert pretrained["logits_diff_vs_run"] < TOLERANCE[precision]
    # 6. init_module() and init_module(empty_init=True) give the seeded eager CPU construction, exactly
    initial = run["empty_init"]
    assert initial["same_names"]
    assert initial["max_diff"] == 0.0 and initial["differ"] == [], initial
    assert initial["max_diff_to_cpu"] == 0.0, initial
