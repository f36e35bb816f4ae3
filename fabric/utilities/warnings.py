"""Warnings Lightning users filter by class: ``PossibleUserWarning`` and the switch that silences it."""

from __future__ import annotations

import warnings


class PossibleUserWarning(UserWarning):
    """A warning about something that is often, but not always, a mistake (e.g. few DataLoader workers)."""


class LightningDeprecationWarning(DeprecationWarning):
    """A feature of Lightning's API that is going away (Lightning's class; its users filter warnings by it)."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Ignore every :class:`PossibleUserWarning` from now on (from ``module`` only, when given a regex)."""
    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)
