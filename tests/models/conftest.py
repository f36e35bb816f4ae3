"""The model matrix runs in `nox -s models` (which sets FABRIC_RUN_MODELS=1), not in the default suite.

It starts two launches per cell for about ten minutes on 2 cores, and needs `transformers`; the default
`nox -s tests` stays short even where `transformers` happens to be installed.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FABRIC_RUN_MODELS") == "1":
        return
    skip = pytest.mark.skip(reason="model matrix: `nox -s models` (or set FABRIC_RUN_MODELS=1)")
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)
