"""Seeding every random-number generator a training script touches, DataLoader workers included.

The seed is published in the environment under Lightning's names only (``PL_GLOBAL_SEED``,
``PL_SEED_WORKERS``), exactly as Lightning Fabric does, so that scripts, tools and processes written for
it see the same environment. ``FABRIC_GLOBAL_SEED``/``FABRIC_SEED_WORKERS`` are read as a fallback (a
seed a user or a job script set under our name is honoured) but never written.
"""

from __future__ import annotations

import os
import random

import torch

from fabric.utilities.rank_zero import global_rank as _current_rank
from fabric.utilities.rank_zero import rank_zero_info, rank_zero_warn

_PL_SEED_ENV = "PL_GLOBAL_SEED"
_PL_WORKERS_ENV = "PL_SEED_WORKERS"
# Read when Lightning's are unset, never written: the value seed_everything publishes is Lightning's.
_SEED_ENV = "FABRIC_GLOBAL_SEED"
_WORKERS_ENV = "FABRIC_SEED_WORKERS"
_MIN_SEED = 0
_MAX_SEED = 2**32 - 1  # NumPy's legacy seeding takes 32 bits


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, NumPy (if installed) and torch on every device; return the seed used.

    Without ``seed``, the one in Lightning's ``PL_GLOBAL_SEED`` (or, if unset, ``FABRIC_GLOBAL_SEED``) is
    used, else 0. The seed is also written to the environment so that processes started later by a launcher
    pick the same one. With ``workers=True`` the DataLoaders set up by the fabric give every worker of
    every rank its own, reproducible seed (see :func:`pl_worker_init_function`). As in Lightning, this
    function defaults to ``workers=False``, and :meth:`Fabric.seed_everything` to ``workers=True``.

    Example::

        seed_everything(42, workers=True)
    """
    if seed is None:
        env_name, env_seed = _seed_from_environment()
        if env_seed is None:
            seed = 0
            if verbose:
                rank_zero_warn(
                    f"No seed found, seed set to {seed}: no seed was given and {_PL_SEED_ENV}/{_SEED_ENV} are"
                    " not set. Pass one to make the run reproducible under another seed."
                )
        else:
            try:
                seed = int(env_seed)
            except ValueError as err:
                raise ValueError(
                    f"Invalid seed specified via {env_name}: {env_seed!r} is not an integer. Set it to a whole number in "
                    f"[{_MIN_SEED}, {_MAX_SEED}] or unset it."
                ) from err
    if not isinstance(seed, int) or isinstance(seed, bool):
        try:
            seed = int(seed)  # as Lightning: a NumPy integer or "42" is accepted
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"seed_everything(seed={seed!r}): the seed must be an int, got {type(seed).__name__}."
            ) from err
    if not _MIN_SEED <= seed <= _MAX_SEED:
        raise ValueError(
            f"seed_everything(seed={seed}): {seed} is not in bounds; the seed must lie in [{_MIN_SEED}, {_MAX_SEED}] (NumPy accepts "
            f"32-bit seeds only). Pass a smaller non-negative seed, e.g. `seed % 2**32`."
        )
    if verbose:
        rank_zero_info(f"Seed set to {seed}")
    os.environ[_PL_SEED_ENV] = str(seed)
    os.environ[_PL_WORKERS_ENV] = str(int(workers))
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CPU and every CUDA device
    _seed_numpy(seed)
    return seed


def _seed_from_environment() -> tuple[str, str | None]:
    # Lightning's first: it is what seed_everything writes, so it holds the latest seed of this process.
    for name in (_PL_SEED_ENV, _SEED_ENV):
        value = os.environ.get(name)
        if value is not None:
            return name, value
    return _PL_SEED_ENV, None


def global_seed() -> int:
    """The seed :func:`seed_everything` published (0 when it was not called), e.g. for samplers."""
    _, value = _seed_from_environment()
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _seed_numpy(seed: int) -> None:
    try:
        import numpy as np  # guarded: works without numpy, as torch does
    except ImportError:
        return
    np.random.seed(seed)


def reset_seed() -> None:
    """Seed again with the seed stored by :func:`seed_everything`, e.g. in a freshly spawned process."""
    _, seed = _seed_from_environment()
    if seed is not None:
        seed_everything(int(seed), workers=workers_seeding_enabled(), verbose=False)


def workers_seeding_enabled() -> bool:
    """Whether :func:`seed_everything` asked for per-worker seeding (Lightning's variable, else ours)."""
    value = os.environ.get(_PL_WORKERS_ENV, os.environ.get(_WORKERS_ENV, "0"))
    return value == "1"


_MASK_64 = (1 << 64) - 1


def _worker_seeds(base_seed: int, worker_id: int, global_rank: int, count: int) -> list[int]:
    # The three numbers packed into one, mixed by MurmurHash3's 64-bit finalizer, then a linear
    # congruential sequence (Knuth's MMIX constants): the derivation Lightning uses, so that worker
    # seeds, and with them the workers' augmentations, are the same under both.
    state = (base_seed << 32) | (worker_id << 16) | global_rank
    state ^= state >> 33
    state = (state * 0xFF51AFD7ED558CCD) & _MASK_64
    state ^= state >> 33
    state = (state * 0xC4CEB9FE1A85EC53) & _MASK_64
    state ^= state >> 33
    seeds = []
    for _ in range(count):
        state = (state * 6364136223846793005 + 1) & _MASK_64
        seeds.append(state)
    return seeds


def pl_worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """Give DataLoader worker ``worker_id`` of process ``rank`` a distinct, reproducible seed.

    PyTorch seeds torch in each worker from the loader's base seed, but not NumPy or ``random``, and
    the same base seed on every rank would make all ranks draw the same augmentations. The seeds are
    derived from (base seed, worker id, global rank) exactly as Lightning derives them, so a ported
    script's workers draw the same numbers.
    """
    global_rank = rank if rank is not None else _current_rank()
    base_seed = torch.initial_seed() - worker_id  # torch gives worker i the seed base + i
    torch_seed, random_high, random_low = _worker_seeds(base_seed, worker_id, global_rank, count=3)
    torch.manual_seed(torch_seed)
    random.seed((random_high << 32) | random_low)
    try:
        import numpy as np  # guarded: works without numpy, as torch does
    except ImportError:
        return
    np.random.seed(np.random.SeedSequence([base_seed, worker_id, global_rank]).generate_state(4))


worker_init_function = pl_worker_init_function  # our earlier name
