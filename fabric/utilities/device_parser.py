"""Parsing the ``devices`` argument shared by the GPU accelerators.

Accepted forms, as in Lightning: an int (how many; ``-1`` for all), a list of indices, a string of an
int (``"2"``, ``"-1"``) or of comma-separated indices (``"0,1"``, ``"1,"``), or ``"auto"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def parse_gpu_ids(devices: Any, available: int, accelerator: str) -> list[int]:
    """Return the list of device indices requested by ``devices`` on a machine with ``available`` of them.

    Raises ``ValueError`` (naming the value, what is available, and the fix) for an impossible request.
    """
    if available == 0:
        raise ValueError(
            f"devices={devices!r}: this machine has no {accelerator} device. Use accelerator='cpu', or "
            f"accelerator='auto' to pick what is available."
        )
    requested = _normalize(devices, available, accelerator)
    if not requested:
        raise ValueError(
            f"devices={devices!r} selects no {accelerator} device. Pass a positive number, a list of "
            f"indices, or 'auto'."
        )
    if len(set(requested)) != len(requested):
        raise ValueError(f"devices={devices!r} names a {accelerator} device more than once.")
    unavailable = [i for i in requested if i < 0 or i >= available]
    if unavailable:
        raise ValueError(
            f"devices={devices!r} asks for {accelerator} device(s) {unavailable}, but this machine has "
            f"{available} {accelerator} device(s) (indices 0..{available - 1 if available else 'none'}). "
            f"Pass devices='auto', a number up to {available}, or indices that exist."
        )
    return requested


def _normalize(devices: Any, available: int, accelerator: str) -> list[int]:
    if isinstance(devices, bool):
        raise TypeError(f"devices={devices!r} is a bool; pass an int, a list of indices, a string or 'auto'.")
    if devices == "auto" or devices == -1 or devices == "-1":
        return list(range(available))
    if isinstance(devices, int):
        if devices < -1:
            raise ValueError(f"devices={devices} is invalid: pass a positive number, -1 (all) or 'auto'.")
        if devices > available:
            raise ValueError(
                f"devices={devices} asks for {devices} {accelerator} device(s), but this machine has "
                f"{available} {accelerator} device(s). Pass devices={available} or fewer, or devices='auto'."
            )
        return list(range(devices))
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            parts = [p.strip() for p in text.split(",") if p.strip()]
            try:
                return [int(p) for p in parts]
            except ValueError as err:
                raise ValueError(f"devices={devices!r} is not a comma-separated list of indices.") from err
        try:
            return _normalize(int(text), available, accelerator)
        except ValueError as err:
            if "invalid literal" in str(err):
                raise ValueError(
                    f"devices={devices!r} is not understood. Pass an int, 'auto', '-1' or indices like '0,1'."
                ) from err
            raise
    if isinstance(devices, Sequence):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in devices):
            raise TypeError(f"devices={devices!r}: a list of devices must hold int indices only.")
        return list(devices)
    raise TypeError(
        f"devices={devices!r} has type {type(devices).__name__}; pass an int, a list of indices, a string "
        f"or 'auto'."
    )


def parse_cpu_count(devices: Any) -> int:
    """The number of CPU processes requested. A list or index string is refused: CPUs have no index."""
    if isinstance(devices, bool):
        raise TypeError(f"devices={devices!r} is a bool; pass the number of processes as an int.")
    if devices == "auto":
        return 1
    if isinstance(devices, str):
        try:
            devices = int(devices.strip())
        except ValueError as err:
            raise ValueError(
                f"devices={devices!r} is not valid for accelerator='cpu': pass the number of processes "
                f"as an int (e.g. devices=2) or 'auto'."
            ) from err
    if isinstance(devices, int):
        if devices == -1:
            return 1
        if devices < 1:
            raise ValueError(
                f"devices={devices} is not valid for accelerator='cpu': pass a number of processes >= 1."
            )
        return devices
    raise TypeError(
        f"devices={devices!r} is not valid for accelerator='cpu': CPU devices have no index; pass the "
        f"number of processes as an int (e.g. devices=2)."
    )
