"""A legacy plain-PyTorch training script: the "before" of the porting guide (see README.md here).

Everything is done by hand: choosing the device, `.cuda()` calls, autocast and GradScaler, the DDP
boilerplate (process group, DistributedSampler, wrapping, rank checks) and checkpointing. It runs
on a CPU too (the `.cuda()` calls are guarded), on one process or under torchrun:

    python examples/porting/legacy_train.py
    torchrun --nproc-per-node 2 examples/porting/legacy_train.py --out out/legacy
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n: int = 2048, features: int = 20, classes: int = 4) -> TensorDataset:
    """A fixed, generated classification task (no download)."""
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(n, features, generator=generator)
    w = torch.randn(features, classes, generator=generator)
    y = (x @ w + 0.3 * torch.randn(n, classes, generator=generator)).argmax(1)
    return TensorDataset(x, y)


def make_model(features: int = 20, classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="passes over the training data (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="samples per step on each process (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--precision",
        choices=["32", "bf16-mixed", "16-mixed"],
        default="32",
        help="numeric precision, e.g. 32-true or bf16-mixed (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed, for repeatable runs (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join("out", "legacy"),
        help="folder for logs, checkpoints and outputs (default: %(default)s)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_args()

    # --- 1. distributed boilerplate: read torchrun's variables, start the process group
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ["LOCAL_RANK"])
    else:
        rank, world_size, local_rank = 0, 1, 0

    # --- 2. the device, by hand
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")

    torch.manual_seed(args.seed)
    model = make_model()
    if torch.cuda.is_available():
        model = model.cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    # --- 3. mixed precision, by hand
    amp_dtype = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[args.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    # --- 4. the data: a DistributedSampler when distributed, shuffling otherwise
    dataset = make_data()
    if distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed
        )
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    else:
        sampler = None
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

    # --- 5. resume by hand (map_location, every rank reads the file)
    checkpoint_path = os.path.join(args.out, "checkpoint.pt")
    start_epoch = 0
    if args.resume and os.path.exists(checkpoint_path):
        checkpoint = torch.load(checkpoint_path, map_location=device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"])
        start_epoch = checkpoint["epoch"]

    # --- 6. wrap in DDP after loading weights (DDP keys would start with "module.")
    if distributed:
        model = DistributedDataParallel(model, device_ids=[local_rank] if torch.cuda.is_available() else None)

    for epoch in range(start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        for x, y in loader:
            if torch.cuda.is_available():
                x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            total += loss.item() * len(y)
            count += len(y)
        # average the epoch loss over every process, by hand
        stats = torch.tensor([total, count], device=device, dtype=torch.float64)
        if distributed:
            dist.all_reduce(stats)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  loss {stats[0] / stats[1]:.4f}")

        # --- 7. checkpoint by hand: rank 0 writes, unwrap DDP, everyone waits
        if rank == 0:
            os.makedirs(args.out, exist_ok=True)
            raw_model = model.module if isinstance(model, DistributedDataParallel) else model
            torch.save(
                {
                    "model": raw_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "epoch": epoch + 1,
                },
                checkpoint_path,
            )
        if distributed:
            dist.barrier()

    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
