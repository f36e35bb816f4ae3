"""Lightning's names for plugins of engines fabric drives differently: importable, and explicit when used.

A script that imports one of these names (often only to annotate, or in a branch it never takes) still
imports; constructing one raises a ``TypeError`` that says what to use instead. Without the name the
whole script would fail at its first line, for a feature it may not even use.
"""

from __future__ import annotations

from typing import Any, NoReturn


def unsupported(name: str, module: str, instead: str, base: type = object) -> type:
    """A class named ``name`` whose construction raises, telling the user to ``instead``."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"fabric has no {name} (Lightning's `{module}.{name}`): {instead}.")

    cls = type(
        name, (base,), {"__init__": __init__, "__module__": module, "__doc__": f"Not in fabric: {instead}."}
    )
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]  # an abstract base would refuse before __init__ could explain
    return cls
