"""The example checks run in `nox -s examples` (which sets FABRIC_RUN_EXAMPLES=1), not in the default suite.

Each starts real training processes for minutes on a CPU; the default `nox -s tests` stays short.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FABRIC_RUN_EXAMPLES") == "1":
        return
    skip = pytest.mark.skip(reason="example run: `nox -s examples` (or set FABRIC_RUN_EXAMPLES=1)")
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)
