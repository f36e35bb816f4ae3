"""One 2-process FSDP run with the layouts real language models have: tied embeddings, marked methods.

Started by ``tests/strategies/test_fsdp_tied.py`` as ``python tied_checks.py OUT_DIR``; fabric re-runs it
for rank 1. Every rank writes ``OUT_DIR/rank{N}.json``. The models mirror two tied patterns without
depending on ``transformers`` (``tests/models`` runs the real classes):

- a decoder whose output head is the token embedding (GPT-2, nanoGPT, tied Llama): the head at the top
  level shares its weight with an embedding inside the body;
- an encoder-decoder whose stacks both hold the same embedding module (T5's ``shared``), also tied to
  the head.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import full, max_diff, report, run_sections
from torch import nn

from fabric import Fabric
from fabric.strategies import FSDPStrategy

VOCAB, WIDTH, SEQ, BATCH, STEPS = 11, 16, 6, 4, 4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.mlp = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.mlp(self.norm(x)))


class Body(nn.Module):
    """GPT-2's ``transformer``: embedding, blocks, final norm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class TiedDecoder(nn.Module):
    """``head.weight is body.embed.weight``: one parameter registered on two modules."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.body.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(ids))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """A method that runs the model without calling ``forward`` (marked with ``mark_forward_method``)."""
        return self.head(self.body(ids))

    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy decoding that calls ``forward`` once per token, as ``transformers``' ``generate`` does."""
        for _ in range(new_tokens):
            ids = torch.cat([ids, self(ids)[:, -1:].argmax(-1)], dim=1)
        return ids

    def training_step(self, ids: torch.Tensor) -> torch.Tensor:
        """Lightning's step method, reached through the strategy's hooks as Lightning routes it."""
        return _loss(self.head(self.body(ids)), ids)


class Stack(nn.Module):
    def __init__(self, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed  # the same module in both stacks, as T5 passes `shared`
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, ids: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(ids)
        if context is not None:
            x = x + context.mean(dim=1, keepdim=True)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class SharedEncoderDecoder(nn.Module):
    """``shared``, ``encoder.embed`` and ``decoder.embed`` are one module; the head is tied to it too."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Embedding(VOCAB, WIDTH)
        self.encoder = Stack(self.shared)
        self.decoder = Stack(self.shared)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.shared.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(ids, context=self.encoder(ids.flip(1))))


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def _batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (2 * BATCH, SEQ), generator=generator) for _ in range(STEPS)]


def _reference(cls: type[nn.Module]) -> tuple[list[float], nn.Module, torch.optim.Optimizer]:
    """The same training on one process with the whole batch: the losses FSDP must reproduce."""
    torch.manual_seed(0)
    model = cls()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for ids in _batches():
        loss = _loss(model(ids), ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses, model, optimizer


def _train(fabric: Fabric, cls: type[nn.Module], empty_init: bool) -> tuple[list[float], Any, Any]:
    torch.manual_seed(0)
    with fabric.init_module(empty_init=empty_init):
        model = cls()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    losses = []
    for ids in _batches():
        half = ids[fabric.global_rank * BATCH : (fabric.global_rank + 1) * BATCH]
        loss = _loss(model(half), half)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(fabric.all_reduce(loss.detach(), reduce_op="mean")))
    return losses, model, optimizer


def tied(fabric: Fabric, cls: type[nn.Module], empty_init: bool) -> dict[str, Any]:
    reference, ref_model, _ = _reference(cls)
    losses, model, _ = _train(fabric, cls, empty_init)
    params = {name: full(p) for name, p in model.module.named_parameters()}
    return {
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses, reference)),
        "max_param_diff": max_diff(params, dict(ref_model.named_parameters())),
        "still_tied": model.module.head.weight is _embedding_weight(model.module),
    }


def _embedding_weight(model: nn.Module) -> nn.Parameter:
    return model.body.embed.weight if isinstance(model, TiedDecoder) else model.shared.weight


def marked_methods(fabric: Fabric) -> dict[str, Any]:
    _, ref_model, _ = _reference(TiedDecoder)
    _, model, _ = _train(fabric, TiedDecoder, empty_init=False)
    ids = _batches()[0][:2]
    model.mark_forward_method("logits")
    model.mark_forward_method("generate")
    with torch.no_grad():
        logits = model.logits(ids)
        generated = model.generate(ids, new_tokens=3)
        step_loss = model.training_step(ids)
        expected = ref_model(ids)
    return {
        "logits_diff": float((logits - expected).abs().max()),
        "generated_equal": bool(torch.equal(generated, ref_model.generate(ids, new_tokens=3))),
        "step_loss_diff": abs(float(step_loss) - float(_loss(expected, ids))),
    }


def optimizer_state(fabric: Fabric) -> dict[str, Any]:
    """``optimizer.state_dict()`` of the set-up optimizer, then ``load_state_dict`` into a fresh one."""
    _, _, ref_optimizer = _reference(TiedDecoder)
    _, _, optimizer = _train(fabric, TiedDecoder, empty_init=False)
    state = optimizer.state_dict()
    expected = ref_optimizer.state_dict()
    diff = max(
        float((state["state"][i]["exp_avg"] - expected["state"][i]["exp_avg"]).abs().max())
        for i in expected["state"]
    )
    torch.manual_seed(5)
    model2 = TiedDecoder()
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    model2, optimizer2 = fabric.setup(model2, optimizer2)
    optimizer2.load_state_dict(state)
    reloaded = optimizer2.state_dict()
    # The same state as a plain file, read by `fabric.load_raw` (Lightning's FSDPStrategy refuses a raw
    # optimizer load with NotImplementedError; here the set-up optimizer knows its model).
    path = Path(fabric.broadcast(tempfile.mkdtemp())) / "optimizer.pt"
    if fabric.global_rank == 0:
        torch.save(state, path)
    fabric.barrier()
    torch.manual_seed(6)
    model3 = TiedDecoder()
    model3, optimizer3 = fabric.setup(model3, torch.optim.Adam(model3.parameters(), lr=1e-2))
    fabric.load_raw(path, optimizer3)
    raw = optimizer3.state_dict()
    return {
        "raw_load_diff": max(
            float((raw["state"][i]["exp_avg"] - state["state"][i]["exp_avg"]).abs().max())
            for i in state["state"]
        ),
        "keys_equal": sorted(state["state"]) == sorted(expected["state"]),
        "exp_avg_diff": diff,
        "reload_diff": max(
            float((reloaded["state"][i]["exp_avg"] - state["state"][i]["exp_avg"]).abs().max())
            for i in state["state"]
        ),
        "steps": sorted({float(s["step"]) for s in reloaded["state"].values()}),
    }


def main(out_dir: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="fsdp")
    fabric.launch()
    # The method and optimizer checks wrap the blocks explicitly, so that they do not depend on how the
    # default policy treats the tied head (the head and embedding stay in the root unit either way).
    blocks = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(auto_wrap_policy={Block}))
    results = run_sections(
        {
            "decoder_head": lambda: tied(fabric, TiedDecoder, empty_init=False),
            "decoder_head_empty_init": lambda: tied(fabric, TiedDecoder, empty_init=True),
            "encoder_decoder": lambda: tied(fabric, SharedEncoderDecoder, empty_init=False),
            "encoder_decoder_empty_init": lambda: tied(fabric, SharedEncoderDecoder, empty_init=True),
            "marked_methods": lambda: marked_methods(blocks),
            "optimizer_state": lambda: optimizer_state(blocks),
            "policy_units": lambda: _units(fabric),
        }
    )
    report(out_dir, fabric.global_rank, results)


def _units(fabric: Fabric) -> dict[str, Any]:
    """Which submodules the default policy made FSDP units, by name."""
    from torch.distributed.fsdp import FSDPModule

    found = {}
    for cls in (TiedDecoder, SharedEncoderDecoder):
        torch.manual_seed(0)
        model = fabric.setup_module(cls())
        found[cls.__name__] = sorted(
            name for name, m in model.module.named_modules() if isinstance(m, FSDPModule) and name
        )
    assert isinstance(fabric.strategy, FSDPStrategy)
    return found


if __name__ == "__main__":
    main(sys.argv[1])
