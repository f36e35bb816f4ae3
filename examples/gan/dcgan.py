"""A DCGAN on scikit-learn's bundled 8x8 handwritten digits, with fabric (no download).

Two models and two optimizers, alternating discriminator (D) and generator (G) steps, bf16-mixed
precision, gradient clipping, an exponential moving average (EMA) copy of the generator,
checkpoint/resume, and a PNG grid of EMA samples after every epoch:

    python examples/gan/dcgan.py                          # a few minutes on a CPU (bf16 is emulated there;
                                                          #   --precision 32-true is ~10x faster on CPU)
    python examples/gan/dcgan.py --devices 2              # DDP on two processes
    python examples/gan/dcgan.py --resume                 # continue from OUT/checkpoint.ckpt
    python examples/plot_metrics.py out/gan/logs/metrics.csv

Prints one line per epoch (D and G losses, D's mean output on real and fake images); writes
OUT/samples/epoch_NNN.png, OUT/logs/metrics.csv (and TensorBoard files when tensorboard is installed).
Needs `pip install scikit-learn` (and optionally tqdm, tensorboard): `pip install -e '.[examples]'`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import struct
import sys
import zlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric
from fabric.loggers import CSVLogger, Logger, TensorBoardLogger


class Generator(nn.Module):
    """Noise (latent) -> 1x8x8 image in [-1, 1]: a linear layer to 2x2, then two transposed convolutions."""

    def __init__(self, latent: int = 32, width: int = 64) -> None:
        super().__init__()
        self.latent = latent
        self.project = nn.Sequential(
            nn.Linear(latent, width * 2 * 2), nn.BatchNorm1d(width * 2 * 2), nn.ReLU()
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1),  # 2x2 -> 4x4
            nn.BatchNorm2d(width // 2),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 2, 1, 4, 2, 1),  # 4x4 -> 8x8
            nn.Tanh(),
        )
        self.width = width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(z).view(-1, self.width, 2, 2))


class Discriminator(nn.Module):
    """1x8x8 image -> one logit (real or fake)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width // 2, 4, 2, 1),  # 8x8 -> 4x4
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, width, 4, 2, 1),  # 4x4 -> 2x2
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(width * 2 * 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def load_digits_dataset() -> TensorDataset:
    """scikit-learn's 1,797 8x8 digits (bundled with the package), scaled to [-1, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("This example needs scikit-learn: pip install scikit-learn") from None
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0  # values 0..16
    return TensorDataset(images.unsqueeze(1) * 2 - 1)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, for parameters; buffers (BatchNorm statistics) are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def write_png_grid(images: torch.Tensor, path: str, scale: int = 4) -> None:
    """Tile (N, 1, H, W) images in [-1, 1] into a square grayscale PNG (written with zlib, no extra package)."""
    n, _, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad = 1
    grid = torch.zeros(rows * (h + pad) + pad, cols * (w + pad) + pad)
    pixels = ((images[:, 0].float().clamp(-1, 1) + 1) / 2).cpu()
    for i in range(n):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            pixels[i]
        )
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    data = (grid * 255).round().to(torch.uint8)
    height, width = data.shape
    raw = b"".join(b"\x00" + bytes(row.tolist()) for row in data)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)


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
    parser.add_argument("--devices", default="1", help="processes/devices to run on (default: %(default)s)")
    parser.add_argument(
        "--precision", default="bf16-mixed", help="e.g. bf16-mixed (default), 32-true, 16-mixed"
    )
    parser.add_argument(
        "--epochs", type=int, default=15, help="passes over the training data (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="samples per step on each process (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--latent", type=int, default=32, help="size of the generator's noise vector (default: %(default)s)"
    )
    parser.add_argument("--clip", type=float, default=1.0, help="max gradient norm for D and G")
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.99,
        help="decay of the generator's exponential moving average (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed, for repeatable runs (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join("out", "gan"),
        help="folder for logs, checkpoints and outputs (default: %(default)s)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.ckpt if it exists"
    )
    args = parser.parse_args(argv)

    fabric = Fabric(
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        loggers=make_loggers(args.out),
    )
    fabric.launch()
    fabric.seed_everything(args.seed)

    generator, discriminator = Generator(args.latent), Discriminator()
    ema = copy.deepcopy(generator).requires_grad_(False)  # a plain module: evaluated, never trained
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    # each model with its own optimizer; under DDP each is wrapped separately
    g_model, opt_g = fabric.setup(generator, opt_g)
    d_model, opt_d = fabric.setup(discriminator, opt_d)
    ema = fabric.to_device(ema)

    loader = DataLoader(load_digits_dataset(), batch_size=args.batch_size, shuffle=True, drop_last=True)
    loader = fabric.setup_dataloaders(loader)

    checkpoint = os.path.join(args.out, "checkpoint.ckpt")
    state = {
        "generator": g_model,
        "discriminator": d_model,
        "ema": ema,
        "opt_g": opt_g,
        "opt_d": opt_d,
        "loader": loader,
        "epoch": 0,
        "step": 0,
    }
    if args.resume and os.path.exists(checkpoint):
        fabric.load(checkpoint, state)
        fabric.print(f"resumed from {checkpoint} at epoch {state['epoch']}")
    for logger in fabric.loggers:
        logger.log_hyperparams(vars(args))

    fixed_noise = torch.randn(64, args.latent, generator=torch.Generator().manual_seed(123)).to(fabric.device)
    for epoch in range(state["epoch"], args.epochs):
        totals = torch.zeros(4, device=fabric.device)
        for (real,) in progress(loader, fabric, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            n = real.shape[0]
            z = torch.randn(n, args.latent, device=fabric.device)
            fake = g_model(z)

            # D step: real -> 1, fake -> 0, in one forward (one DDP forward per backward)
            logits = d_model(torch.cat([real, fake.detach()]))
            targets = torch.cat([torch.ones(n, device=fabric.device), torch.zeros(n, device=fabric.device)])
            d_loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
            fabric.backward(d_loss)
            fabric.clip_gradients(d_model, opt_d, max_norm=args.clip)
            opt_d.step()
            opt_d.zero_grad()

            # G step: make D call the fakes real. D's gradients from this backward are thrown away,
            # so skip their all-reduce; they are zeroed before the next D step.
            with fabric.no_backward_sync(d_model):
                g_loss = F.binary_cross_entropy_with_logits(
                    d_model(fake).float(), torch.ones(n, device=fabric.device)
                )
                fabric.backward(g_loss)
            fabric.clip_gradients(g_model, opt_g, max_norm=args.clip)
            opt_g.step()
            opt_g.zero_grad()
            opt_d.zero_grad()
            update_ema(ema, generator, args.ema_decay)

            d_real = torch.sigmoid(logits[:n].float()).mean()
            d_fake = torch.sigmoid(logits[n:].float()).mean()
            stats = torch.stack([d_loss.detach(), g_loss.detach(), d_real.detach(), d_fake.detach()])
            totals += stats
            state["step"] += 1
            fabric.log_dict(
                {"d_loss": stats[0], "g_loss": stats[1], "d_real": stats[2], "d_fake": stats[3]},
                step=state["step"],
            )
        means = fabric.all_reduce(totals / len(loader), reduce_op="mean")
        fabric.print(
            f"epoch {epoch + 1:3d}/{args.epochs}  d_loss {means[0]:.4f}  g_loss {means[1]:.4f}  "
            f"D(real) {means[2]:.3f}  D(fake) {means[3]:.3f}"
        )
        if not torch.isfinite(means[:2]).all():
            raise SystemExit(
                f"epoch {epoch + 1}: a loss is not finite (d_loss {means[0]}, g_loss {means[1]})"
            )
        if fabric.is_global_zero:
            ema.eval()
            with torch.no_grad(), fabric.autocast():
                samples = ema(fixed_noise)
            write_png_grid(samples, os.path.join(args.out, "samples", f"epoch_{epoch + 1:03d}.png"))
        state["epoch"] = epoch + 1
        fabric.save(checkpoint, state)
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.print(f"samples in {os.path.join(args.out, 'samples')}, checkpoint {checkpoint}")


if __name__ == "__main__":
    main()
