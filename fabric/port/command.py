"""``fabric port SCRIPT [-o OUT | --diff] [--check]``: the command around :func:`fabric.port.convert`.

Several files of one program, or a folder (``fabric port main.py trainer.py -o OUTDIR``,
``fabric port DIR -o OUTDIR``), are converted together by :func:`fabric.port.convert_files`.
Kept apart from ``fabric/cli.py`` (which only parses and delegates) and imported only when the
subcommand runs, so neither ``import fabric`` nor ``fabric run`` ever needs ``libcst``.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

Error = Callable[[str], NoReturn]


def port(scripts: Sequence[str], output: str | None, diff: bool, check: bool, error: Error) -> int:
    """Convert the script(s); write to ``output``, print a diff, or print the script; return the exit code.

    The report goes to stderr, so ``fabric port train.py > new.py`` leaves a clean script. With
    ``check``, the exit code is 1 when anything was left for the user to change.
    """
    for path in scripts:
        if not os.path.exists(path):
            error(f"port: the script {path!r} does not exist.")
    if output is not None and diff:
        error("port: -o/--output and --diff were both given; pass one (a diff writes no file).")
    try:
        # needs libcst (optional); the error says how to install it
        from fabric.port import convert, convert_files
    except ImportError as err:  # pragma: no cover - the package itself has no hard dependency
        error(str(err))
    if len(scripts) > 1 or os.path.isdir(scripts[0]):
        return _port_files(scripts, output, diff, check, error, convert_files)
    script = scripts[0]
    if output is not None and os.path.abspath(output) == os.path.abspath(script):
        error(f"port: -o {output!r} is the script itself; write the port to another file and compare them.")
    source = _read(script)
    try:
        code, report = convert(source)
    except ImportError as err:
        error(f"port: {err}")
    except SyntaxError as err:
        error(f"port: {script!r} is not valid Python: {err}")
    if diff:
        sys.stdout.writelines(_diff(source, code, script))
    elif output is not None:
        _write(output, code)
    else:
        sys.stdout.write(code)
    print(report.text(), file=sys.stderr)
    if output is not None:
        print(f"wrote {output}", file=sys.stderr)
    return 1 if check and report.unconverted else 0


def _port_files(
    paths: Sequence[str], output: str | None, diff: bool, check: bool, error: Error, convert_files: Callable
) -> int:
    """Several files, or folders of them: one program, converted together into the folder ``output``."""
    if output is None and not diff:
        error(
            f"port: {len(paths)} paths given ({' '.join(paths)}): pass -o OUTDIR, the folder to write the "
            "converted files to, or --diff to review the changes."
        )
    root = os.path.commonpath([os.path.abspath(p if os.path.isdir(p) else os.path.dirname(p)) for p in paths])
    out = os.path.abspath(output) if output is not None else None
    if out is not None and os.path.isfile(out):
        error(
            f"port: -o {output!r} is a file; with several scripts or a folder it names the folder to write to."
        )
    if out is not None and out == root:
        error(
            f"port: -o {output!r} is the folder of the scripts; the port would overwrite them: write it to "
            "another folder and compare them."
        )
    files = sorted({os.path.relpath(f, root).replace(os.sep, "/") for f in _python_files(paths, out)})
    if not files:
        error(f"port: no .py files in {' '.join(paths)}.")
    sources = {name: _read(os.path.join(root, name)) for name in files}
    try:
        results = convert_files(sources)
    except SyntaxError as err:
        error(f"port: not valid Python: {err}")
    for name, (code, report) in results.items():
        if diff:
            sys.stdout.writelines(_diff(sources[name], code, name))
        elif out is not None:
            _write(os.path.join(out, name), code)
        if report.findings:
            print(f"== {name} ==\n{report.text()}\n", file=sys.stderr)
    if out is not None:
        print(f"wrote {len(results)} file(s) to {output}", file=sys.stderr)
    return 1 if check and any(report.unconverted for _, report in results.values()) else 0


def _python_files(paths: Sequence[str], out: str | None) -> list[str]:
    """The given files and the .py files under the given folders (not under ``out``, a previous port)."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(os.path.abspath(path))
            continue
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = [
                s
                for s in sorted(subfolders)
                if not s.startswith(".")
                and s != "__pycache__"
                and os.path.join(os.path.abspath(folder), s) != out
            ]
            found += [os.path.abspath(os.path.join(folder, n)) for n in sorted(names) if n.endswith(".py")]
    return found


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _write(path: str, code: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.write(code)


def _diff(source: str, code: str, name: str) -> list[str]:
    return list(
        difflib.unified_diff(
            source.splitlines(keepends=True), code.splitlines(keepends=True), name, f"{name} (fabric)"
        )
    )
