"""A small character-level transformer language model, sharded with FSDP on 2 processes (no download).

The corpus is text every Python installation carries: the docstrings of a fixed list of standard
library modules and of their public classes and functions (about 300 KB). The model is built with
`fabric.init_module(empty_init=True)` (on the meta device: no memory until fabric shards it), trained
with FSDP2 when there are several processes, and its throughput (tokens/s) and model FLOPs
utilization are measured with `ThroughputMonitor` and `measure_flops`. A sample is generated at the end.

    python examples/lm/char_transformer.py                  # one process
    python examples/lm/char_transformer.py --devices 2      # FSDP on two processes (gloo on a CPU)
    python examples/plot_metrics.py out/lm/logs/metrics.csv

Prints the loss every --log-every steps with tokens/s and MFU, then the validation loss and a
generated sample. On a CPU the MFU is relative to a matmul rate measured at start (there is no data
sheet peak); on a known GPU it is relative to the vendor's peak. Pass --peak-flops to set it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from fabric import Fabric
from fabric.loggers import CSVLogger, Logger, TensorBoardLogger
from fabric.strategies import FSDPStrategy
from fabric.utilities import ThroughputMonitor, measure_flops

CORPUS_MODULES = (
    "argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "fractions", "functools", "heapq", "inspect", "json", "logging", "pathlib",
    "pickle", "random", "shutil", "statistics", "string", "subprocess", "tarfile", "textwrap",
    "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)  # fmt: skip


def load_corpus() -> str:
    """Docstrings of CORPUS_MODULES and their public members, in a fixed order."""
    parts: list[str] = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            member = getattr(module, attr)
            if (inspect.isclass(member) or inspect.isfunction(member)) and getattr(
                member, "__module__", ""
            ) == name:
                doc = inspect.getdoc(member)
                if doc:
                    parts.append(f"{attr}: {doc}")
    return "\n\n".join(p for p in parts if p)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and an MLP. The unit FSDP shards."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch * time, vocab): flat, so the output is no view (FSDP warns about views)."""
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).flatten(0, 1))


def cpu_matmul_flops(size: int = 512, seconds: float = 0.3) -> float:
    """FLOP/s of a float32 matmul on this process's CPU threads: the reference for MFU on a CPU."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def make_loggers(out: str) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(out, name=None, version="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(out, name=None, version="tensorboard"))
    return loggers


def progress(iterable, fabric: Fabric, **kwargs):  # type: ignore[no-untyped-def]
    """A tqdm bar on rank 0 when stderr is a terminal and tqdm is installed; the plain iterable otherwise."""
    if not (fabric.is_global_zero and sys.stderr.isatty() and importlib.util.find_spec("tqdm")):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    parser.add_argument(
        "--devices", type=int, default=1, help="processes/devices to run on (default: %(default)s)"
    )
    parser.add_argument(
        "--precision", default="32-true", help="bf16-mixed on a GPU; bf16 is emulated (slow) on CPUs"
    )
    parser.add_argument(
        "--steps", type=int, default=600, help="optimizer steps to train (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per process per step")
    parser.add_argument(
        "--context", type=int, default=64, help="characters the model sees at once (default: %(default)s)"
    )
    parser.add_argument(
        "--dim", type=int, default=128, help="width of the transformer (default: %(default)s)"
    )
    parser.add_argument(
        "--heads", type=int, default=4, help="attention heads per layer (default: %(default)s)"
    )
    parser.add_argument("--layers", type=int, default=3, help="transformer layers (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--log-every", type=int, default=50, help="log metrics every this many steps (default: %(default)s)"
    )
    parser.add_argument("--peak-flops", type=float, default=None, help="the device's peak FLOP/s, for MFU")
    parser.add_argument(
        "--sample-length",
        type=int,
        default=200,
        help="characters to generate at the end (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed, for repeatable runs (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join("out", "lm"),
        help="folder for logs, checkpoints and outputs (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    strategy = FSDPStrategy(auto_wrap_policy={Block}) if args.devices > 1 else "auto"
    fabric = Fabric(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=strategy,
        precision=args.precision,
        loggers=make_loggers(args.out),
    )
    fabric.launch()
    fabric.seed_everything(args.seed)

    text = load_corpus()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    fabric.print(f"corpus: {len(text):,} characters, {len(chars)} distinct; {fabric.world_size} process(es)")

    config = {"vocab": len(chars), "dim": args.dim, "heads": args.heads, "layers": args.layers}
    with fabric.init_module(empty_init=True):  # meta device under FSDP: materialized shard by shard in setup
        model = CharTransformer(**config, context=args.context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    for logger in fabric.loggers:
        logger.log_hyperparams(vars(args))

    # FLOPs of one training step (forward and backward) of this process's batch, counted on the meta device
    with torch.device("meta"):
        meta_model = CharTransformer(**config, context=args.context)
        meta_x = torch.randint(0, len(chars), (args.batch_size, args.context))
    flops_per_step = measure_flops(
        meta_model, lambda: meta_model(meta_x), lambda y: F.cross_entropy(y, meta_x.flatten())
    )
    peak = args.peak_flops
    if peak is None and fabric.device.type == "cpu":
        peak = cpu_matmul_flops()
    monitor = ThroughputMonitor(fabric, available_flops=peak, window_size=max(2, min(10, args.log_every)))
    fabric.print(
        f"{sum(p.numel() for p in meta_model.parameters()):,} parameters; {flops_per_step:.3g} FLOPs per step"
    )

    generator = torch.Generator().manual_seed(args.seed + fabric.global_rank)  # each process its own batches

    def batch(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(source) - args.context - 1, (args.batch_size,), generator=generator)
        x = torch.stack([source[s : s + args.context] for s in starts])
        y = torch.stack([source[s + 1 : s + args.context + 1] for s in starts])
        return fabric.to_device(x), fabric.to_device(y)

    model.train()
    start = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for step in progress(range(args.steps), fabric, desc="training"):
        lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch(train_data)
        loss = F.cross_entropy(model(x), y.flatten())
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()

        monitor.update(
            time=time.perf_counter() - start,
            batches=step + 1,
            samples=(step + 1) * args.batch_size,
            lengths=(step + 1) * args.batch_size * args.context,
            flops=flops_per_step,
        )
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            metrics = monitor.compute_and_log(step=step, loss=loss.item(), lr=lr)
            tokens = metrics.get("items_per_sec", metrics.get("device/items_per_sec"))
            mfu = metrics.get("device/mfu")
            fabric.print(
                f"step {step + 1:5d}/{args.steps}  loss {loss.item():.4f}"
                + (f"  tokens/s {tokens:,.0f}" if tokens else "")
                + (f"  MFU {mfu:.1%}" if mfu is not None else "")
            )

    model.eval()
    with torch.no_grad():
        val = torch.stack(
            [F.cross_entropy(model(x), y.flatten()) for x, y in (batch(val_data) for _ in range(8))]
        )
    val_loss = fabric.all_reduce(val.mean(), reduce_op="mean").item()
    fabric.log_dict({"val_loss": val_loss}, step=args.steps)
    fabric.print(f"validation loss {val_loss:.4f}")

    # generation: every process runs the sharded model with the same random stream, so the text agrees
    sampler = torch.Generator().manual_seed(1234)
    idx = torch.tensor([[lookup[c] for c in "The "]], dtype=torch.long)
    with torch.no_grad():
        for _ in range(args.sample_length):
            logits = model(fabric.to_device(idx[:, -args.context :]))[-1].float().cpu()
            next_id = torch.multinomial(F.softmax(logits / 0.8, dim=-1), 1, generator=sampler)
            idx = torch.cat([idx, next_id.view(1, 1)], dim=1)
    fabric.print("sample:\n" + "".join(chars[i] for i in idx[0].tolist()))
    for logger in fabric.loggers:
        logger.finalize("success")


if __name__ == "__main__":
    main()
