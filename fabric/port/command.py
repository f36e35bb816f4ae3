"""``fabric port SCRIPT [-o OUT | --diff] [--check]``: the command around :func:`fabric.port.convert`.

Kept apart from ``fabric/cli.py`` (which only parses and delegates) and imported only when the
subcommand runs, so neither ``import fabric`` nor ``fabric run`` ever needs ``libcst``.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def port(script: str, output: str | None, diff: bool, check: bool, error: Callable[[str], NoReturn]) -> int:
    """Convert ``script``; write it to ``output``, print a diff, or print it; return the exit code.

    The report goes to stderr, so ``fabric port train.py > new.py`` leaves a clean script. With
    ``check``, the exit code is 1 when anything was left for the user to change.
    """
    if not os.path.isfile(script):
        error(f"port: the script {script!r} does not exist.")
    if output is not None and diff:
        error("port: -o/--output and --diff were both given; pass one (a diff writes no file).")
    if output is not None and os.path.abspath(output) == os.path.abspath(script):
        error(f"port: -o {output!r} is the script itself; write the port to another file and compare them.")
    try:
        from fabric.port import convert  # needs libcst (optional); the error below says how to install it
    except ImportError as err:  # pragma: no cover - the package itself has no hard dependency
        error(str(err))
    with open(script, encoding="utf-8") as file:
        source = file.read()
    try:
        code, report = convert(source)
    except ImportError as err:
        error(f"port: {err}")
    except SyntaxError as err:
        error(f"port: {script!r} is not valid Python: {err}")
    if diff:
        sys.stdout.writelines(
            difflib.unified_diff(
                source.splitlines(keepends=True), code.splitlines(keepends=True), script, f"{script} (fabric)"
            )
        )
    elif output is not None:
        with open(output, "w", encoding="utf-8") as file:
            file.write(code)
    else:
        sys.stdout.write(code)
    print(report.text(), file=sys.stderr)
    if output is not None:
        print(f"wrote {output}", file=sys.stderr)
    return 1 if check and report.unconverted else 0
