"""Tiny ``transformers`` models built from configs with random weights (no downloads), and their data.

Each :class:`Spec` says how to build the model, what a batch looks like, which submodules are its
blocks (for activation checkpointing) and, for the decoders, how to split it for tensor parallelism.
Imported only by the model-matrix scripts and tests, which skip without ``transformers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

VOCAB, SEQ, IMAGE, LABELS = 64, 8, 16, 3


@dataclass
class Spec:
    name: str
    make_config: Callable[[], Any]
    model_class: str  # the name in `transformers`
    block: str  # the class of the repeated blocks (activation checkpointing, wrap units)
    kind: str  # "causal", "seq2seq" or "image"
    tensor_parallel: bool = False  # whether a TP plan exists (Llama-style projections)
    #: FSDP's `activation_checkpointing_policy` works on the blocks (False: T5, see cell.py)
    strategy_checkpointing: bool = True
    #: BatchNorm running statistics: per-rank buffers (FSDP broadcasts rank 0's at setup and at each save)
    running_stats: bool = False

    def build(self) -> nn.Module:
        import transformers

        return getattr(transformers, self.model_class)(self.make_config())

    def block_class(self) -> type[nn.Module]:
        import importlib

        model_class = type(self.build_meta())
        module = importlib.import_module(model_class.__module__)
        return getattr(module, self.block)  # type: ignore[no-any-return]

    def build_meta(self) -> nn.Module:
        with torch.device("meta"):
            return self.build()

    def batch(self, step: int, rows: slice) -> dict[str, torch.Tensor]:
        """The global batch of ``step`` (4 rows), cut to ``rows``: the same numbers in every process."""
        generator = torch.Generator().manual_seed(1000 + step)
        if self.kind == "image":
            pixels = torch.randn(4, 3, IMAGE, IMAGE, generator=generator)
            labels = torch.randint(0, LABELS, (4,), generator=generator)
            return {"pixel_values": pixels[rows], "labels": labels[rows]}
        ids = torch.randint(1, VOCAB, (4, SEQ), generator=generator)
        if self.kind == "seq2seq":
            return {"input_ids": ids[rows], "labels": ids.flip(1)[rows]}
        return {"input_ids": ids[rows], "labels": ids[rows]}

    def prompt(self) -> dict[str, torch.Tensor]:
        """A fixed input for logits and ``generate``."""
        if self.kind == "image":
            return {
                "pixel_values": torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(5))
            }
        ids = torch.randint(1, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(5))
        return {"input_ids": ids}

    def logits_inputs(self) -> dict[str, torch.Tensor]:
        """The fixed input for comparing logits (an encoder-decoder also needs decoder tokens)."""
        inputs = self.prompt()
        if self.kind == "seq2seq":
            inputs["decoder_input_ids"] = inputs["input_ids"].flip(1)
        return inputs


def _gpt2() -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip


def _llama(tied: bool) -> Callable[[], Any]:
    def config() -> Any:
        from transformers import LlamaConfig

        # grouped-query attention (4 query heads, 2 key/value heads), rotary position buffers
        return LlamaConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, tie_word_embeddings=tied,
            bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )  # fmt: skip

    return config


def _t5() -> Any:
    from transformers import T5Config

    return T5Config(
        num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, d_kv=8, num_heads=4, vocab_size=VOCAB,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=True,
    )  # fmt: skip


def _mixtral() -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip


def _resnet() -> Any:
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=LABELS)


def _vit() -> Any:
    from transformers import ViTConfig

    return ViTConfig(
        image_size=IMAGE, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=LABELS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip


SPECS = {
    spec.name: spec
    for spec in (
        Spec("gpt2", _gpt2, "GPT2LMHeadModel", "GPT2Block", "causal"),
        Spec(
            "llama",
            _llama(tied=False),
            "LlamaForCausalLM",
            "LlamaDecoderLayer",
            "causal",
            tensor_parallel=True,
        ),
        Spec(
            "llama-tied",
            _llama(tied=True),
            "LlamaForCausalLM",
            "LlamaDecoderLayer",
            "causal",
            tensor_parallel=True,
        ),
        Spec("t5", _t5, "T5ForConditionalGeneration", "T5Block", "seq2seq", strategy_checkpointing=False),
        Spec(
            "mixtral", _mixtral, "MixtralForCausalLM", "MixtralDecoderLayer", "causal", tensor_parallel=True
        ),
        Spec(
            "resnet",
            _resnet,
            "ResNetForImageClassification",
            "ResNetBottleNeckLayer",
            "image",
            running_stats=True,
        ),
        Spec("vit", _vit, "ViTForImageClassification", "ViTLayer", "image"),
    )
}


def parallelize_decoder(model: nn.Module, mesh: Any) -> nn.Module:
    """A Llama-style TP plan (attention and MLP projections column- then row-wise), then FSDP2 on the rest."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = mesh["tensor_parallel"]
    for layer in model.model.layers:  # type: ignore[union-attr]
        plan: dict[str, Any] = {
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(),
        }
        if hasattr(layer.mlp, "gate_proj"):  # dense MLP; experts stay whole on every TP rank
            plan.update(
                {
                    "mlp.gate_proj": ColwiseParallel(),
                    "mlp.up_proj": ColwiseParallel(),
                    "mlp.down_proj": RowwiseParallel(),
                }
            )
        parallelize_module(layer, tp, plan)
    dp = mesh["data_parallel"]
    for layer in model.model.layers:  # type: ignore[union-attr]
        fully_shard(layer, mesh=dp)
    fully_shard(model, mesh=dp)
    return model
