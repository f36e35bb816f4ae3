"""The one-process half of a model-matrix cell: load the 2-process checkpoint, consolidate, from_pretrained.

Started by ``tests/models/test_models.py`` as ``python offline.py OUT_DIR MODEL PRECISION`` after
``cell.py`` wrote ``OUT_DIR/checkpoint[.pt]`` and ``OUT_DIR/expected.pt``. It:

1. loads the checkpoint into a differently seeded model and a fresh AdamW with ``Fabric(devices=1)``:
   weights and optimizer state must equal what the 2-process run held at the save;
2. runs ``fabric consolidate`` on a sharded checkpoint (a single file needs none);
3. loads the consolidated weights into the library's own class, ``save_pretrained``, ``from_pretrained``:
   the logits on a fixed input must equal the 2-process run's.

Writes ``OUT_DIR/offline.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from fabric import Fabric
from tests.models.zoo import SPECS


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max((float((a[k].float() - b[k].float()).abs().max()) for k in a), default=0.0)


def main(out_dir: str, model_name: str, precision: str) -> None:
    spec = SPECS[model_name]
    out = Path(out_dir)
    expected = torch.load(out / "expected.pt", weights_only=True)
    sharded = (out / "checkpoint").is_dir()
    checkpoint = out / ("checkpoint" if sharded else "checkpoint.pt")
    result: dict[str, Any] = {}
    try:
        fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
        torch.manual_seed(321)
        model = spec.build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model, optimizer = fabric.setup(model, optimizer)
        remainder = fabric.load(checkpoint, {"model": model, "optimizer": optimizer})
        names = {id(p): n for n, p in model.module.named_parameters()}
        model.eval()
        with torch.no_grad():
            loaded_logits = model(**spec.logits_inputs()).logits.float()
        result["load"] = {
            "param_diff": max_diff(
                {n: p.detach() for n, p in model.module.named_parameters()}, expected["params"]
            ),
            "exp_avg_diff": max_diff(
                {names[id(p)]: s["exp_avg"] for p, s in optimizer.state.items()}, expected["exp_avg"]
            ),
            "step": remainder.get("step"),
        }
    except Exception:
        result["load"] = {"error": traceback.format_exc()}
        loaded_logits = torch.full_like(expected["logits"], float("nan"))
    try:
        consolidated = checkpoint
        if sharded:
            consolidated = out / "consolidated.pt"
            command = [sys.executable, "-m", "fabric.cli", "consolidate", str(checkpoint), str(consolidated)]
            subprocess.run(command, check=True, capture_output=True, text=True)
        weights = torch.load(consolidated, weights_only=True)["model"]
        plain = spec.build()
        missing, unexpected = plain.load_state_dict(weights, strict=False)
        with tempfile.TemporaryDirectory() as directory:
            plain.save_pretrained(directory)
            library_model = type(plain).from_pretrained(directory)
        library_model.eval()
        if precision == "bf16-true":
            library_model = library_model.to(torch.bfloat16)
        with torch.no_grad():
            logits = library_model(**spec.logits_inputs()).logits.float()
        result["from_pretrained"] = {
            # tied duplicates (lm_head.weight) may be left out of a checkpoint: the tie restores them
            "missing": [k for k in missing if not _tied(plain, k)],
            "unexpected": list(unexpected),
            # the library's class against the one-process load of the same checkpoint, and against the
            # 2-process run's rank 0 at the save
            "logits_diff": float((logits - loaded_logits).abs().max()),
            "logits_diff_vs_run": float((logits - expected["logits"]).abs().max()),
        }
    except Exception as err:
        detail = getattr(err, "stderr", "") or ""
        result["from_pretrained"] = {"error": traceback.format_exc() + detail}
    (out / "offline.json").write_text(json.dumps(result, indent=1))


def _tied(model: torch.nn.Module, key: str) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    return key in params and any(params[key] is p for k, p in params.items() if k != key)


if __name__ == "__main__":
    main(*sys.argv[1:4])
