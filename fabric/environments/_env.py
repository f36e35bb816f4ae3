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


def refuse_change(what: str, requested: int, fixed: int, source: str) -> None:
    """Raise ``ValueError`` when fabric computed ``requested`` but the scheduler fixed ``fixed``.

    Schedulers decide ranks and world size; a different value computed from fabric's arguments means
    those arguments do not describe the allocation, and the rendezvous would hang rather than fail.
    """
    if requested != fixed:
        raise ValueError(
            f"Cannot set the {what} to {requested}: the scheduler that started this process fixed it"
            f" at {source}={fixed}. This means `devices` and `num_nodes` do not describe the allocation;"
            f" pass values that match it (devices per node times num_nodes equals the scheduler's number"
            f" of tasks)."
        )


def mismatch(argument: str, received: int, expected: int, source: str, fix: str) -> ValueError:
    """Build the error for a user argument that contradicts the scheduler's allocation."""
    return ValueError(
        f"`{argument}={received}` does not match the allocation: {source} means {argument}={expected}."
        f" Pass `{argument}={expected}`, or {fix}"
    )
