"""Reading scheduler variables with errors that name the variable, the value and the fix."""

from __future__ import annotations

import os


def require_env(name: str, fix: str) -> str:
    """Return ``os.environ[name]``, or raise ``RuntimeError`` naming the missing variable and ``fix``."""
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"The environment variable {name} is not set. {fix}")
    return value


def env_int(name: str, fix: str, default: int | None = None) -> int:
    """Return ``os.environ[name]`` as an integer.

    Without ``default`` a missing variable is an error (``RuntimeError``); a value that is not an
    integer always is (``ValueError``), since guessing a rank silently would hang the rendezvous.
    """
    raw = os.environ.get(name)
    if raw is None:
        if default is not None:
            return default
        raise RuntimeError(f"The environment variable {name} is not set. {fix}")
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"The environment variable {name}={raw!r} is not an integer. {fix}") from None


def env_port(name: str, fix: str) -> int:
    """Return ``os.environ[name]`` as a TCP port, or raise naming the variable and its value."""
    port = env_int(name, fix)
    if not 1 <= port <= 65535:
        raise ValueError(f"The environment variable {name}={port} is not a TCP port (1-65535). {fix}")
    return port


def mismatch(
    argument: str, received: int, expected: int, source: str, fix: str, lightning_words: str = ""
) -> ValueError:
    """Build the error for a user argument that contradicts the scheduler's allocation.

    ``lightning_words``, where given, is Lightning's sentence for the same error, appended in
    parentheses so that code (and tests) matching Lightning's wording keep matching.
    """
    said = f" ({lightning_words})" if lightning_words else ""
    return ValueError(
        f"`{argument}={received}` does not match the allocation: {source} means {argument}={expected}{said}."
        f" Pass `{argument}={expected}`, or {fix}"
    )
