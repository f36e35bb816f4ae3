"""Test script: torch seeded, but NumPy's generator is also used (seed_everything would reseed it)."""

import numpy as np
import torch

np.random.seed(11)
torch.manual_seed(4)
noise = np.random.rand(3)
print("numpy", " ".join(f"{v:.8f}" for v in noise))
print("torch", " ".join(f"{v:.8f}" for v in torch.rand(3).tolist()))
