"""Run Lightning's own Fabric tests against fabric, and count what passes where Lightning passes.

Lightning's ``tests/tests_fabric`` is the broadest description of Lightning Fabric's public behaviour
there is. This script runs it twice from a Lightning checkout that you fetch yourself (none of its
files are part of this repository):

1. ``lightning``: as Lightning ships it, against the installed ``lightning`` package (the yardstick:
   which tests pass on this machine at all);
2. ``fabric``: the same tests with ``lightning.fabric.X`` and ``lightning_fabric.X`` resolving to
   ``fabric.X`` (``alias/sitecustomize.py``; nothing else of Lightning is importable in this run).

It prints the counts (collected, Lightning's passes, ours among them) and the tests Lightning passes
and we fail, grouped by cause; ``OUT/report.md`` keeps the full list with each test's error.

Usage (in an environment with fabric's test extra, which installs ``lightning``)::

    git clone --depth 1 --branch 2.6.5 https://github.com/Lightning-AI/pytorch-lightning /tmp/pl
    python benchmarks/lightning_suite/run.py /tmp/pl                       # both runs, whole suite
    python benchmarks/lightning_suite/run.py /tmp/pl --reuse-baseline      # keep OUT/lightning.xml
    python benchmarks/lightning_suite/run.py /tmp/pl -- tests_fabric/strategies/test_ddp.py  # a subset

The whole suite takes 20-40 minutes per run on 2 loaded cores; ``--jobs N`` (pytest-xdist) shortens it.
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class Result:
    outcome: str
    message: str = ""
    detail: str = ""


def run_pytest(
    checkout: Path,
    mode: str,
    xml: Path,
    selection: list[str],
    jobs: int,
    timeout: int,
    placeholders: bool = False,
) -> None:
    """Run pytest on Lightning's tests from ``<checkout>/tests`` (as Lightning's CI does) into ``xml``."""
    env = dict(os.environ)
    env.pop("FABRIC_LIGHTNING_ALIAS", None)
    env.pop("FABRIC_LIGHTNING_PLACEHOLDERS", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    if mode == "fabric":
        env["FABRIC_LIGHTNING_ALIAS"] = "1"
        if placeholders:
            env["FABRIC_LIGHTNING_PLACEHOLDERS"] = "1"
        paths = [str(HERE / "alias"), str(REPO)]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    command = [sys.executable, "-m", "pytest", *(selection or ["tests_fabric"])]
    command += ["-q", "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={xml}", "--color=no"]
    command += ["--continue-on-collection-errors"]
    command += ["-o", "junit_family=xunit1", f"--timeout={timeout}"]
    if jobs > 1:
        command += ["-n", str(jobs)]
    print(f"[{mode}] {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=checkout / "tests", env=env, check=False)


def read_junit(xml: Path) -> tuple[dict[str, Result], dict[str, Result]]:
    """Tests by id (``module::Class::name``) and the collection errors by module."""
    tests: dict[str, Result] = {}
    broken_modules: dict[str, Result] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        outcome, message, detail = PASSED, "", ""
        for tag in ("failure", "error"):
            element = case.find(tag)
            if element is not None:
                outcome, message, detail = FAILED, element.get("message", ""), element.text or ""
        if case.find("skipped") is not None and outcome == PASSED:
            outcome = SKIPPED
        if not classname:  # a module that failed to collect: pytest names it by its dotted path
            broken_modules[name] = Result(outcome, _last_error_line(detail) or message, detail)
            continue
        tests[f"{classname}::{name}"] = Result(outcome, message, detail)
    return tests, broken_modules


def _last_error_line(detail: str) -> str:
    lines = [line[2:].strip() for line in detail.splitlines() if line.startswith("E ")]
    return lines[-1] if lines else ""


_NAME_PATTERNS = (
    re.compile(r"cannot import name '(\w+)' from '([\w.]+)'"),
    re.compile(r"module '([\w.]+)' has no attribute '(\w+)'"),
    re.compile(r"<module '([\w.]+)'[^>]*> (?:has no|does not have the) attribute '(\w+)'"),
    re.compile(r"No module named '([\w.]+)'"),
    re.compile(r"(\w+)' object has no attribute '(\w+)'"),
)


_IMPORT_LINE = re.compile(r"from (lightning[._]fabric[\w.]*) import (?:\(([^)]*)\)|([\w, ]+))")
_PLACEHOLDER = re.compile(r"placeholder used: ([\w.]+)")


def _imports_only_private(module: str, detail: str, source: Path | None = None) -> bool:
    """Whether the test's import from ``module`` (a Lightning path) names private names only."""
    suffix = module.split(".", 1)[1] if module.startswith("fabric.") else module
    if source is not None and source.is_file():
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(suffix):
                return all(alias.name.startswith("_") for alias in node.names)
    for match in _IMPORT_LINE.finditer(detail):
        if match.group(1).endswith(suffix):
            names = [n.strip() for n in (match.group(2) or match.group(3)).split(",") if n.strip()]
            return bool(names) and all(n.startswith("_") for n in names)
    return False


def cause_of(result: Result, source: Path | None = None) -> str:
    """A short cause shared by tests that fail for the same reason."""
    message = result.message.splitlines()[0] if result.message else _last_error_line(result.detail)
    placeholder = _PLACEHOLDER.search(message) or _PLACEHOLDER.search(result.detail)
    if placeholder is not None:
        full = placeholder.group(1)
        private = any(part.startswith("_") and not part.startswith("__") for part in full.split("."))
        return f"{'private' if private else 'public'} name used: {full}"
    for pattern in _NAME_PATTERNS:
        match = pattern.search(message)
        if match is None:
            continue
        if pattern is _NAME_PATTERNS[0]:
            module, name = match.group(2), match.group(1)
        elif pattern is _NAME_PATTERNS[3]:
            module, name = match.group(1), ""
        else:
            module, name = match.group(1), match.group(2)
        full = f"{module}.{name}" if name else module
        private = any(part.startswith("_") and not part.startswith("__") for part in full.split("."))
        if not name and not private:  # a module path: private if only private names are imported from it
            private = _imports_only_private(module, result.detail, source)
        return f"{'private' if private else 'public'} name missing: {full}"
    message = re.sub(r"0x[0-9a-f]+", "0x..", message)
    message = re.sub(r"/tmp/\S+|'/\S+'", "PATH", message)
    return message[:160] or "(no message)"


def compare(lightning: dict[str, Result], ours: dict[str, Result], broken: dict[str, Result]) -> dict:
    """Lightning's passes, ours among them, and each of the rest with its cause."""
    passes = [test for test, result in lightning.items() if result.outcome == PASSED]
    ours_pass, failing = [], {}
    for test in passes:
        result = ours.get(test)
        if result is None:  # not collected: its module failed to import, or its parameters differ
            module = test.split("::")[0]
            owner = next((m for m in broken if module == m or module.startswith(m + ".")), None)
            result = broken.get(owner) if owner else Result(FAILED, "not collected in the fabric run")
            result = Result(FAILED, f"module not collected: {result.message}", result.detail)
        if result.outcome == PASSED:
            ours_pass.append(test)
        else:
            failing[test] = result
    return {"passes": passes, "ours_pass": ours_pass, "failing": failing}


def _source_of(test: str, checkout: Path | None) -> Path | None:
    """The test module's file in the checkout, from an id such as ``tests.tests_fabric.x.test_y::test_z``."""
    if checkout is None:
        return None
    parts = test.split("::")[0].split(".")
    parts = parts[1:] if parts[0] == "tests" else parts
    return checkout / "tests" / Path(*parts).with_suffix(".py")


def report(
    lightning: dict[str, Result],
    ours: dict[str, Result],
    broken: dict[str, Result],
    out: Path,
    name: str,
    checkout: Path | None = None,
) -> str:
    summary = compare(lightning, ours, broken)
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for test, result in summary["failing"].items():
        groups[cause_of(result, _source_of(test, checkout))].append(test)
    public = sum(len(tests) for cause, tests in groups.items() if not cause.startswith("private name"))
    private = len(summary["failing"]) - public
    lines = [
        f"# Lightning's tests_fabric against fabric ({name})",
        "",
        "| | tests |",
        "| --- | --- |",
        f"| collected (Lightning's run) | {len(lightning)} |",
        f"| collected (fabric run) | {len(ours)} (+{len(broken)} modules that failed to import) |",
        f"| Lightning passes | {len(summary['passes'])} |",
        f"| fabric passes among them | {len(summary['ours_pass'])} |",
        f"| Lightning passes, fabric fails: private names | {private} |",
        f"| Lightning passes, fabric fails: other causes | {public} |",
        "",
        "## Failing tests by cause (largest first)",
        "",
    ]
    for cause, tests in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        lines.append(f"- **{len(tests)}** {cause}")
        lines.extend(f"  - `{test}`" for test in sorted(tests)[:5])
        if len(tests) > 5:
            lines.append(f"  - ... and {len(tests) - 5} more")
    text = "\n".join(lines) + "\n"
    details = [text, "\n## Every failing test with its error\n"]
    for test, result in sorted(summary["failing"].items()):
        details.append(f"\n### {test}\n\n```\n{_last_error_line(result.detail) or result.message}\n```\n")
    (out / f"report_{name}.md").write_text("".join(details))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkout", type=Path, help="a Lightning checkout (the folder holding tests/tests_fabric)"
    )
    parser.add_argument("selection", nargs="*", help="pytest paths/ids relative to <checkout>/tests")
    parser.add_argument("--out", type=Path, default=Path("lightning_suite_out"), help="where the reports go")
    parser.add_argument("--reuse-baseline", action="store_true", help="keep OUT/lightning.xml if it exists")
    parser.add_argument("--only", choices=("lightning", "fabric"), help="run one side only")
    parser.add_argument("--jobs", type=int, default=1, help="pytest-xdist workers (needs pytest-xdist)")
    parser.add_argument("--timeout", type=int, default=300, help="per-test timeout in seconds")
    parser.add_argument(
        "--placeholders",
        action="store_true",
        help="replace each name fabric lacks by a placeholder, so that a test fails only if it uses one "
        "(results in OUT/fabric_placeholders.xml)",
    )
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    if not (checkout / "tests" / "tests_fabric").is_dir():
        parser.error(
            f"checkout={str(checkout)!r} has no tests/tests_fabric: pass the root of a Lightning checkout"
        )
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ours_name = "fabric_placeholders" if args.placeholders else "fabric"
    for mode in ("lightning", "fabric"):
        xml = out / f"{ours_name if mode == 'fabric' else mode}.xml"
        if args.only not in (None, mode) or (mode == "lightning" and args.reuse_baseline and xml.exists()):
            continue
        run_pytest(checkout, mode, xml, args.selection, args.jobs, args.timeout, args.placeholders)
    lightning, lightning_broken = read_junit(out / "lightning.xml")
    if lightning_broken:
        print(
            f"note: {len(lightning_broken)} modules fail to import under Lightning itself: {sorted(lightning_broken)}"
        )
    if not (out / f"{ours_name}.xml").exists():
        return
    ours, broken = read_junit(out / f"{ours_name}.xml")
    print(report(lightning, ours, broken, out, ours_name, checkout))
    print(f"full list: {out / f'report_{ours_name}.md'}")


if __name__ == "__main__":
    main()
