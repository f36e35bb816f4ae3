"""Strategy names accepted by ``Fabric(strategy=...)`` and what each one builds.

Looked up only when a name other than "auto"/"single_device" is used, so that a single-device run
imports no distributed module.
"""

from __future__ import annotations

from typing import Any

STRATEGY_NAMES: dict[str, dict[str, Any]] = {}
