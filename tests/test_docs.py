"""Promises the documentation makes: options explained, links that resolve, and every code block runs.

Every fenced block of README.md and docs/ is executed here, so a promise in the docs is a test. The
markers a page may put on the lines just above a block (the rest of the page is not read):

- ``<!-- doc-setup: NAME -->``: the block is a fragment; ``tests/docs_setup/NAME.py`` holds the lines
  that complete it (``readme-example-devices-2``: the README's example with ``devices=2``). A python
  block runs after them; a bash block finds them in its directory as ``train.py`` (the script its
  commands start).
- ``*Not run by the doc tests: REASON*``: a visible line for a block that cannot run in any test run (a
  SLURM cluster, a download, an install). The reason names what runs the same thing instead.
- ``*Run by the doc tests of `nox -s SESSION`: REASON*``: a visible line for a block that needs an
  optional engine (DeepSpeed, torch-xla): that session runs this file with ``FABRIC_DOC_SESSION=SESSION``
  and the engine installed, and runs those blocks only.
- ``<!-- doc-same-as: PATH -->``: the block is the file PATH (a script another session runs), so it
  cannot drift from what that session runs.

A ``text`` block is a picture (a directory layout), not code.
"""

from __future__ import annotations

import ast
import os
import re
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fabric.environments import find_free_network_port

ROOT = Path(__file__).resolve().parent.parent
SETUP_DIR = ROOT / "tests" / "docs_setup"
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SKIP_MARK = re.compile(r"^\*Not run by the doc tests: (.+)\*$")
SETUP_MARK = re.compile(r"^<!-- doc-setup: ([\w-]+) -->$")
SAME_AS_MARK = re.compile(r"^<!-- doc-same-as: (\S+) -->$")
SESSION_MARK = re.compile(r"^\*Run by the doc tests of `nox -s (\w+)`: .{20,}\*$")
#: the nox session running this file; blocks marked for a session run there and only there
SESSION = os.environ.get("FABRIC_DOC_SESSION")
LANGUAGES = {"python", "bash", "text"}
#: the setup name of the README's complete example with ``devices=2`` (the script of the launch commands)
README_EXAMPLE_ON_TWO_DEVICES = "readme-example-devices-2"
#: seconds one block may take: a 2-process block imports torch three times on a loaded 2-core machine
BLOCK_TIMEOUT = 180
# Files whose command-line options a user reads with `--help`.
CLI_FILES = sorted([ROOT / "fabric" / "cli.py", *(ROOT / "examples").rglob("*.py")])


def _options_without_help(path: Path) -> list[str]:
    """The ``add_argument`` calls in ``path`` that pass no ``help=``, as ``file:line option``."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        is_option = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        )
        if is_option and not any(keyword.arg == "help" for keyword in node.keywords):
            name = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "?"
            missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return missing


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_line_option_has_help_text(path: Path) -> None:
    assert _options_without_help(path) == []


@dataclass(frozen=True)
class Block:
    """One fenced code block and the markers on the lines above it."""

    page: Path
    line: int
    language: str
    code: str
    setup: str | None
    skip_reason: str | None
    same_as: str | None
    session: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _mark(pattern: re.Pattern[str], lines: list[str]) -> str | None:
    found = [m.group(1) for m in map(pattern.match, lines) if m]
    return found[0] if found else None


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[index])
        if not fence:
            index += 1
            continue
        indent, end = fence.group(1), index + 1
        while not lines[end].strip().startswith("```"):
            end += 1
        code = "\n".join(line[len(indent) :] for line in lines[index + 1 : end]) + "\n"
        above = index - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marks = []
        while above >= 0 and lines[above].strip() and not lines[above].startswith(("```", "#")):
            marks.append(lines[above].strip())
            above -= 1

        blocks.append(
            Block(
                page,
                index + 1,
                fence.group(2),
                code,
                _mark(SETUP_MARK, marks),
                _mark(SKIP_MARK, marks),
                _mark(SAME_AS_MARK, marks),
                _mark(SESSION_MARK, marks),
            )
        )
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in _blocks(page)]
RUNNABLE = [
    b for b in BLOCKS if b.language in ("python", "bash") and b.skip_reason is None and b.session == SESSION
]


def test_a_block_marked_for_a_session_is_run_by_that_session() -> None:
    """The session a block names sets FABRIC_DOC_SESSION to its own name for this file (noxfile.py)."""
    noxfile = (ROOT / "noxfile.py").read_text()
    sessions = {b.session for b in BLOCKS if b.session is not None}
    assert sessions, "no block is marked for a session: the marker no longer matches the pages"
    for session in sessions:
        assert re.search(rf"def {session}\(session", noxfile), f"no nox session {session!r}"
        assert f'"FABRIC_DOC_SESSION": "{session}"' in noxfile, (
            f"nox -s {session} does not run its doc blocks"
        )
    for block in BLOCKS:
        if block.session is not None and block.language == "python":
            ast.parse(block.code, filename=block.name)  # at least valid Python in every other run


def test_every_block_says_its_language_and_blocks_were_found() -> None:
    assert len(BLOCKS) > 10, "the block pattern no longer matches the pages' code blocks"
    assert [b.name for b in BLOCKS if b.language not in LANGUAGES] == []


def test_a_block_that_does_not_run_says_why_and_what_runs_it() -> None:
    """A skipped block names the session or test that runs the same thing (or why nothing can)."""
    for block in BLOCKS:
        if block.skip_reason is not None:
            assert len(block.skip_reason) > 20, f"{block.name}: say why, and what runs it instead"
            if block.language == "python":  # not run, but at least valid Python
                ast.parse(block.code, filename=block.name)


def test_readme_has_one_complete_example_and_fits_a_screen() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    complete = [b for b in BLOCKS if b.page.name == "README.md" and b.language == "python" and not b.setup]
    assert len(complete) == 1 and complete[0].skip_reason is None


def test_readme_test_command_is_the_one_ci_runs() -> None:
    """README's `nox -s tests` is what `.ci/run` runs on a fresh clone: the two must not drift apart."""
    readme_block = next(b for b in BLOCKS if b.page.name == "README.md" and b.language == "bash")
    assert "pip install nox && nox -s tests" in readme_block.code
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q nox" in ci
    assert re.search(r"^python3 -m nox -s (\w+ )*tests\b", ci, flags=re.MULTILINE)
    assert re.search(r"^python3 -m nox -s docs\b", ci, flags=re.MULTILINE)


def test_block_is_the_file_it_shows() -> None:
    """A block marked with the file another session runs shows that file, byte for byte."""
    for block in BLOCKS:
        if block.same_as is not None:
            assert block.code == (ROOT / block.same_as).read_text(), block.name


def _setup(name: str | None) -> str:
    """The lines that complete a fragment: a file of tests/docs_setup, or the README's example on 2 devices."""
    if name is None:
        return ""
    if name == README_EXAMPLE_ON_TWO_DEVICES:
        # the README promises that its example with devices=2 runs under each launcher: this is that file
        example = next(
            b for b in BLOCKS if b.page.name == "README.md" and b.language == "python" and not b.setup
        )
        assert example.code.count("devices=1") == 1
        return example.code.replace("devices=1", "devices=2")
    return (SETUP_DIR / f"{name}.py").read_text()


def _environment() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_SIZE", "LOCAL_"))
    }
    # `python`, `fabric` and `torchrun` in a block are those of this interpreter's environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.timeout(BLOCK_TIMEOUT * 4)
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_code_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = _setup(block.setup)
    if block.language == "python" and "devices=2" not in setup + block.code:
        # one process: run it in this interpreter (torch is imported once for all such blocks),
        # as `python block.py` would, in a directory of its own
        script = tmp_path / "block.py"
        script.write_text(setup + "\n" + block.code)
        monkeypatch.chdir(tmp_path)
        environ = dict(os.environ)  # seed_everything and friends export variables: keep them to the block
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            os.environ.clear()
            os.environ.update(environ)
        return
    if block.language == "python":
        # two processes: the launcher re-runs the script's own command line, so it needs one
        script = tmp_path / "block.py"
        script.write_text(setup + "\n" + block.code)
        commands = [[sys.executable, str(script)]]
    else:
        if setup:
            (tmp_path / "train.py").write_text(setup)
        lines = [line.split(" #")[0].strip() for line in block.code.splitlines()]
        # `fabric ...` through our CLI module: the test environment also holds Lightning (a yardstick),
        # whose own `fabric` console script may be the one on PATH (docs/processes.md tells users so)
        lines = [
            f"{sys.executable} -m fabric.cli {line[7:]}" if line.startswith("fabric ") else line
            for line in lines
        ]
        commands = [["bash", "-c", line] for line in lines if line and not line.startswith("#")]
    for command in commands:
        env = _environment()
        env["PET_MASTER_PORT"] = str(find_free_network_port())  # torchrun's --master-port, fresh each run
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
        )
        assert done.returncode == 0, (
            f"{block.name}: {command[-1]}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _slugs(page: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL), re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    """Links between pages and into the repository name a file that exists, and a heading in it."""
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _slugs(file)):
            broken.append(target)
    assert broken == []
