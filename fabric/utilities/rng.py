"""Capturing and restoring the state of every random-number generator a training script uses.

The states are made of tensors, ints and tuples only, so that a checkpoint holding them still loads
with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import torch


def capture_rng_state() -> dict[str, Any]:
    """The current state of Python's ``random``, NumPy's global RNG (if installed), torch's CPU and CUDA RNGs."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    numpy_state = _numpy_state()
    if numpy_state is not None:
        state["numpy"] = numpy_state
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back to what :func:`capture_rng_state` recorded."""
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        _set_numpy_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _numpy_state() -> tuple | None:
    try:
        import numpy as np  # guarded: works without numpy, as torch does
    except ImportError:
        return None
    state: Any = np.random.get_state()
    name, keys, position, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))


def _set_numpy_state(state: tuple) -> None:
    try:
        import numpy as np  # guarded: works without numpy, as torch does
    except ImportError:
        return
    name, keys, position, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
