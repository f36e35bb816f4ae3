"""Helpers shared by the precision plugins."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily make ``dtype`` the default floating-point dtype of new tensors."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class DefaultDtype:
    """A reusable, re-entrant context that makes ``dtype`` the default dtype of new tensors.

    Made once per precision and entered on every forward pass; a class rather than a generator
    context keeps that to a few calls (the benchmark counts them).
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._previous: list[torch.dtype] = []

    def __enter__(self) -> None:
        self._previous.append(torch.get_default_dtype())
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc_info: object) -> None:
        torch.set_default_dtype(self._previous.pop())
