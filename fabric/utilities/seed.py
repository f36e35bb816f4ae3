"""Seeding every random-number generator a training script touches, DataLoader workers included."""

from __future__ import annotations

import hashlib
import os
import random

import torch

from fabric.utilities.rank_zero import global_rank as _current_rank
from fabric.utilities.rank_zero import rank_zero_warn

_SEED_ENV = "FABRIC_GLOBAL_SEED"
_WORKERS_ENV = "FABRIC_SEED_WORKERS"
_MAX_SEED = 2**32 - 1


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed ``random``, NumPy (if installed) and torch on every device; return the seed used.

    The seed is also written to the environment so that processes started later by a launcher pick
    the same one. With ``workers=True`` the DataLoaders set up by the fabric give every worker of
    every rank its own, reproducible seed (see :func:`worker_init_function`).

    Example::

        seed_everything(42, workers=True)
    """
    if seed is None:
        env_seed = os.environ.get(_SEED_ENV)
        if env_seed is None:
            seed = 0
            rank_zero_warn(f"No seed was given and {_SEED_ENV} is not set: using seed {seed}.")
        else:
            try:
                seed = int(env_seed)
            except ValueError as err:
                raise ValueError(
                    f"{_SEED_ENV}={env_seed!r} is not an integer. Set it to a whole number or unset it."
                ) from err
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed_everything(seed={seed!r}): the seed must be an int.")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed_everything(seed={seed}): the seed must lie in [0, {_MAX_SEED}].")
    os.environ[_SEED_ENV] = str(seed)
    os.environ[_WORKERS_ENV] = str(int(workers))
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CPU and every CUDA device
    _seed_numpy(seed)
    return seed


def _seed_numpy(seed: int) -> None:
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed)


def reset_seed() -> None:
    """Seed again with the seed stored by :func:`seed_everything`, e.g. in a freshly spawned process."""
    seed = os.environ.get(_SEED_ENV)
    if seed is not None:
        seed_everything(int(seed), workers=bool(int(os.environ.get(_WORKERS_ENV, "0"))))


def workers_seeding_enabled() -> bool:
    """Whether :func:`seed_everything` asked for per-worker seeding."""
    return os.environ.get(_WORKERS_ENV, "0") == "1"


def worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """Give DataLoader worker ``worker_id`` of process ``rank`` a distinct, reproducible seed.

    PyTorch seeds torch in each worker from the loader's base seed, but not NumPy or ``random``; and
    the same base seed on every rank would make all ranks draw the same augmentations. The three
    seeds are taken from a hash of (base seed, worker id, global rank), so no two pairs collide.
    """
    global_rank = rank if rank is not None else _current_rank()
    base_seed = torch.initial_seed() - worker_id  # torch gives worker i the seed base + i
    digest = hashlib.sha256(f"{base_seed}:{worker_id}:{global_rank}".encode()).digest()
    torch_seed, random_seed, numpy_seed = (int.from_bytes(digest[i : i + 4], "little") for i in (0, 4, 8))
    torch.manual_seed(torch_seed)
    random.seed(random_seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(numpy_seed)
