"""Test program, module: a Trainer class that wraps the model in DDP, shards the data, trains,
reduces the epoch loss and writes the snapshot it reads back. It gets no Fabric object from anyone."""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler


class Trainer:
    def __init__(self, model, optimizer, dataset, snapshot):
        self.device = torch.device("cpu")
        self.model = DDP(model.to(self.device))
        self.optimizer = optimizer
        self.sampler = DistributedSampler(dataset, shuffle=True, seed=0)
        self.loader = DataLoader(dataset, batch_size=8, sampler=self.sampler)
        self.snapshot = snapshot
        self.epoch = 0

    def restore(self):
        state = torch.load(self.snapshot, weights_only=True)
        self.model.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]

    def step(self, x, y):
        loss = nn.functional.mse_loss(self.model(x.to(self.device)), y.to(self.device))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def fit(self, epochs):
        for epoch in range(self.epoch, self.epoch + epochs):
            self.sampler.set_epoch(epoch)
            total = torch.zeros(2, dtype=torch.float64)
            for x, y in self.loader:
                loss = self.step(x, y)
                total += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64)
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            if dist.get_rank() == 0:
                print(f"epoch {epoch} world {dist.get_world_size()} loss {(total[0] / total[1]).item():.10f}")
            state = {
                "model": self.model.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": epoch + 1,
            }
            torch.save(state, self.snapshot)
        # the final weights, for another program: only written here, never read back
        if dist.get_rank() == 0:
            torch.save(self.model.module.state_dict(), "final.pt")
        weights = torch.cat([p.detach().flatten() for p in self.model.parameters()])
        print(f"rank {dist.get_rank()} weight sum {weights.sum().item():.10f}")
