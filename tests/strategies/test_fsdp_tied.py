"""FSDP2 with the layouts of real language models, on two real processes (gloo, 127.0.0.1).

Tied embeddings (GPT-2's head, T5's encoder and decoder sharing one embedding) under the default wrap
policy, eagerly and under ``init_module(empty_init=True)``; methods other than ``forward`` (marked ones,
Lightning's ``training_step``, a ``generate`` loop); the set-up optimizer's own ``state_dict`` and
``load_state_dict``. One launch of ``fsdp_scripts/tied_checks.py`` runs them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.strategies.fsdp_scripts.common import section_errors
from tests.strategies.multiprocess import read_rank_results, run_python

SCRIPTS = Path(__file__).resolve().parent / "fsdp_scripts"
#: float32, the same operations in another order (two half batches, a reduce-scatter): rounding only
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("tied_checks")
    run = run_python([str(SCRIPTS / "tied_checks.py"), str(out_dir)], timeout=200)
    assert run.returncode == 0, run.output
    return read_rank_results(out_dir, world_size=2)


def _section(ranks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    errors = section_errors([{name: result[name]} for result in ranks])
    assert not errors, errors
    return [result[name] for result in ranks]


@pytest.mark.timeout(220)
@pytest.mark.parametrize("empty_init", [False, True], ids=["eager", "empty_init"])
@pytest.mark.parametrize("pattern", ["decoder_head", "encoder_decoder"])
def test_tied_embeddings_train_as_on_one_process(
    ranks: list[dict[str, Any]], pattern: str, empty_init: bool
) -> None:
    """The default policy keeps every user of a shared parameter in one unit: same losses, still tied."""
    name = f"{pattern}_empty_init" if empty_init else pattern
    for result in _section(ranks, name):
        assert result["max_loss_diff"] < TOLERANCE
        assert result["max_param_diff"] < TOLERANCE
        assert result["still_tied"]


@pytest.mark.timeout(220)
def test_default_policy_leaves_shared_parameters_to_the_enclosing_unit(ranks: list[dict[str, Any]]) -> None:
    """A child holding a shared parameter is split into its own children; the rest stay units."""
    for result in _section(ranks, "policy_units"):
        assert result["TiedDecoder"] == ["body.blocks.0", "body.blocks.1", "body.norm"]
        assert result["SharedEncoderDecoder"] == [
            "decoder.blocks.0",
            "decoder.blocks.1",
            "decoder.norm",
            "encoder.blocks.0",
            "encoder.blocks.1",
            "encoder.norm",
        ]


@pytest.mark.timeout(220)
def test_marked_and_step_methods_run_under_fsdp(ranks: list[dict[str, Any]]) -> None:
    """A marked method that does not call forward, a generate loop and training_step give eager results."""
    for result in _section(ranks, "marked_methods"):
        assert result["logits_diff"] < TOLERANCE
        assert result["generated_equal"]
        assert result["step_loss_diff"] < TOLERANCE


@pytest.mark.timeout(220)
def test_optimizer_state_dict_round_trips_under_fsdp(ranks: list[dict[str, Any]]) -> None:
    """The set-up optimizer's state_dict is the full index-keyed one, and loads back through FSDP."""
    for result in _section(ranks, "optimizer_state"):
        assert result["keys_equal"]
        assert result["exp_avg_diff"] < TOLERANCE
        assert result["reload_diff"] == 0.0
        assert result["raw_load_diff"] == 0.0  # fabric.load_raw of a plain file (Lightning refuses it)
        assert result["steps"] == [4.0]
