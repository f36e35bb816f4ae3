"""``fabric port``: turn a plain PyTorch training script into a Fabric script, and say what it left.

The converter edits a concrete syntax tree (``libcst``), so comments, blank lines and every statement
it does not touch keep their exact bytes, and running it on its own output changes nothing. Each rule
rewrites a pattern only where the pattern can be proven from the code alone (the call resolves to the
torch function through the script's imports, the arguments are the ones whose meaning is known);
anything else is left as written and listed in the report with the line, the reason and the change
to make by hand.

``libcst`` is an optional dependency (``pip install torch-fabric[port]``): ``import fabric`` never
imports this package, and this package imports ``libcst`` only when :func:`convert` runs.

Example::

    from fabric.port import convert

    code, report = convert(open("train.py").read())
    print(report.text())

Several files of one program (a script and the modules it imports) convert together with
:func:`convert_files`: the script creates the Fabric object and hands it to the modules that use it.
"""

from __future__ import annotations

from collections.abc import Mapping

from fabric.port.report import Finding, Report

__all__ = ["Finding", "Report", "convert", "convert_files"]


def convert(source: str) -> tuple[str, Report]:
    """Convert the source of a PyTorch script to Fabric; return the new source and the report.

    The new source always parses. Where the input has nothing to convert, it is returned unchanged.
    Raises ``ImportError`` (with the install command) when ``libcst`` is missing, and ``SyntaxError``
    when ``source`` is not valid Python.
    """
    _need_libcst()
    from fabric.port.convert import convert_source  # needs libcst (optional), checked just above

    return convert_source(source)


def convert_files(sources: Mapping[str, str]) -> dict[str, tuple[str, Report]]:
    """Convert the files of one program together: ``{relative path: source}`` -> ``{path: (code, report)}``.

    The entry script (a file with a ``__main__`` block or top-level calls) creates the Fabric object as
    :func:`convert` would, and hands it to each module it imports whose functions now use it
    (``trainer_module.fabric = fabric`` right after ``fabric.launch()``; the module declares
    ``fabric: Fabric``). A module that cannot be proven to get it is left whole, with every place listed.

    Example::

        sources = {name: open(name).read() for name in ("main.py", "trainer.py")}
        for name, (code, report) in convert_files(sources).items():
            print(name, report.text())
    """
    _need_libcst()
    from fabric.port.package import convert_files as convert_package  # needs libcst, checked above

    return convert_package(sources)


def _need_libcst() -> None:
    try:
        import libcst  # noqa: F401  (an optional engine: imported only when a conversion runs)
    except ImportError as err:
        raise ImportError(
            "fabric port needs libcst to edit the script without touching its formatting: "
            "`pip install 'torch-fabric[port]'` (or `pip install libcst`)."
        ) from err
