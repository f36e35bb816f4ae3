"""Several files of one program: the entry script creates the Fabric object, the modules it imports use it.

A training program is often a script and a module or two (``main.py`` builds the objects and calls
``Trainer(...).train()`` from ``trainer.py``, where the DDP wrapping, the backward and the device moves
live). Every rule writes ``fabric.x`` alike in each file. What differs is where ``fabric`` comes from:

- the entry script (a file that runs something: a ``__main__`` block or top-level calls; and that no
  other given file imports) creates it as in a single-file port, and right after its ``fabric.launch()`` hands it to each module it imports
  whose code now uses it: ``import trainer as trainer_module`` and ``trainer_module.fabric = fabric``;
- such a module declares the name, ``fabric: Fabric``, after its imports, and nothing else changes.

Why a module attribute and not a new ``fabric`` parameter threaded through the calls: the module's
signatures, its callers and every line outside the rewrites stay as they were, and the one hand-over
line is easy to check by eye. It is proven safe where the tool can see it whole, else the module is
left byte for byte with every place listed:

- the module is imported by the entry script, directly or through other given modules, by a name the
  script's directory on ``sys.path`` resolves (``import trainer``, ``from pkg.trainer import X``,
  relative imports inside a package);
- the module uses ``fabric`` only inside functions (they run after the hand-over; not in code that runs
  at its import, nor in its own ``__main__`` block), binds no name ``fabric`` of its own, starts no
  processes and has no precision switch of its own;
- a precision a module proves (``with torch.autocast(dtype=torch.bfloat16)``) is the entry's, which
  creates ``Fabric(precision=...)``: all files must agree;
- the script calls none of the module's names in code that runs before its ``__main__`` block
  (otherwise the Fabric object is created right after the imports, as for a flat script);
- the entry script itself converts, with a plain ``fabric.launch()`` to put the hand-over after.

A second run changes nothing: a declared module and an existing hand-over line are recognised.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

import libcst as cst

from fabric.port.convert import Pass, finish, run_rules, unchanged
from fabric.port.entry import Threaded, has_fabric, is_import, is_main_guard, is_script, threading_line
from fabric.port.report import Finding, Report
from fabric.port.rules import FABRIC, all_nodes


@dataclass(eq=False)  # one per file: compared by identity
class _File:
    path: str
    source: str
    done: Pass
    #: the given files this one may import (which decides whether it is an entry script)
    imports: set[str] = field(default_factory=set)
    #: why this module cannot be handed the entry's Fabric object ("" while it can)
    refused: str = ""


def convert_files(sources: Mapping[str, str]) -> dict[str, tuple[str, Report]]:
    """Convert the files of one program together; return each file's new source and report.

    ``sources`` maps a relative path (``"main.py"``, ``"pkg/trainer.py"``, ``/``-separated) to its
    source. Each file is converted as :func:`fabric.port.convert` would, except that a module imported
    by an entry script among them gets that script's Fabric object (see this module's docstring).
    Raises ``SyntaxError`` naming the file that does not parse.
    """
    files: dict[str, _File] = {}
    for path, source in sources.items():
        try:
            files[path] = _File(path, source, run_rules(source))
        except SyntaxError as err:
            raise SyntaxError(f"{path}: {err}") from err
    for file in files.values():  # from its own folder (a script's sys.path[0]) or the top folder
        file.imports = _imports(file, set(files), posixpath.dirname(file.path)) | _imports(
            file, set(files), ""
        )
    imported = set().union(*(f.imports for f in files.values()))
    # a file that runs something is an entry script, unless another of the files imports it: then it is
    # a module (its `__main__` block does not run; top-level calls such as `logging.basicConfig()` do)
    entries = [f for f in files.values() if is_script(f.done.module) and f.path not in imported]
    groups = {entry.path: _reachable(entry, files, entries) for entry in entries}
    # a program that starts processes in one file does so in all (the GradScaler rule must know)
    distributed: dict[str, bool] = {}
    for entry in entries:
        group = [entry, *groups[entry.path]]
        distributed[entry.path] = any(f.done.ctx.distributed for f in group)
        for f in group:
            if distributed[entry.path] and not f.done.ctx.distributed:
                f.done = run_rules(f.source, distributed=True)
    results: dict[str, tuple[str, Report]] = {}
    settled = False
    while not settled:  # a module refused for one entry is refused for all: convert the entries again
        settled = True
        for entry in entries:
            results[entry.path], refused = _convert_entry(entry, groups[entry.path], distributed[entry.path])
            settled &= not refused
    for file in files.values():
        if file.path in results:
            continue
        users = [e for e in entries if file in groups[e.path]]
        if _needs_fabric(file) and not users:
            results[file.path] = (
                file.source,
                unchanged(
                    file.done.ctx,
                    "no script among the given files imports this module",
                    "pass the script that imports it too (`fabric port SCRIPT THIS_FILE -o OUTDIR`), or give "
                    "its functions that script's Fabric object, and make these changes",
                ),
            )
        elif _needs_fabric(file) and file.refused:
            results[file.path] = (
                file.source,
                unchanged(
                    file.done.ctx,
                    f"this module cannot be handed the Fabric object: {file.refused}",
                    "give its functions the entry script's Fabric object (a `fabric` argument or "
                    "`module.fabric = fabric` after `fabric.launch()`) and make these changes",
                ),
            )
        elif _needs_fabric(file):
            results[file.path] = _declare(file, [e.path for e in users])
        else:
            results[file.path] = finish(file.done)
    return {path: results[path] for path in sources}


def _convert_entry(entry: _File, modules: list[_File], distributed: bool) -> tuple[tuple[str, Report], bool]:
    """The entry script, handing its Fabric object to ``modules`` that need it; and whether a module was
    newly refused (then every entry must be converted again without it)."""
    entry.done = run_rules(entry.source, distributed)  # afresh: a module's precision may be adopted below
    refused = False
    accepted = []
    for module in (m for m in modules if _needs_fabric(m) and not m.refused):
        module.refused = _refusal(entry, module)
        refused |= bool(module.refused)
        if not module.refused and not _handed_over(entry, _module_name(entry.path, module.path)):
            accepted.append(module)
    threaded = _aliases(entry, [Threaded(_module_name(entry.path, m.path), "") for m in accepted])
    if any(_runs_at_import(entry, t.module) for t in threaded):
        entry.done.ctx.used_at_module_level = True
    code, report = finish(entry.done, threaded)
    for module, t in zip(accepted, threaded):
        if threading_line(t) not in code:
            # the script was left whole, or has no plain `fabric.launch()` to put the hand-over after
            module.refused = (
                f"its entry script {entry.path} was left whole or creates its Fabric object without a plain "
                "`fabric.launch()`"
            )
            refused = True
    return (code, report), refused


# ------------------------------------------------------------------------------------ the import graph
def _imports(file: _File, paths: set[str], root: str) -> set[str]:
    """The given files that ``file`` imports (anywhere in it), resolved as Python would.

    Absolute names resolve from ``root``, the folder of the entry script (``sys.path[0]`` when it
    runs); relative ones from the file's own package.
    """
    folder = posixpath.dirname(file.path)
    found: set[str] = set()
    for node in all_nodes(file.done.module):
        if isinstance(node, cst.Import):
            for alias in node.names:
                found |= _candidates(root, _dotted(alias.name), paths)
        elif isinstance(node, cst.ImportFrom):
            base = folder if node.relative else root
            for _ in range(max(len(node.relative) - 1, 0)):
                base = posixpath.dirname(base)
            name = _dotted(node.module) if node.module is not None else ""
            found |= _candidates(base, name, paths)
            if not isinstance(node.names, cst.ImportStar):
                for alias in node.names:  # `from pkg import trainer`: a submodule
                    found |= _candidates(base, f"{name}.{_dotted(alias.name)}".strip("."), paths)
    found.discard(file.path)
    return found


def _dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return ""


def _candidates(base: str, name: str, paths: set[str]) -> set[str]:
    if not name:
        return set()
    stem = posixpath.join(base, *name.split("."))
    return {p for p in (f"{stem}.py", f"{stem}/__init__.py") if p in paths}


def _reachable(entry: _File, files: dict[str, _File], entries: list[_File]) -> list[_File]:
    """The modules (not entry scripts) the entry imports, directly or through each other."""
    root, paths = posixpath.dirname(entry.path), set(files)
    seen: list[_File] = []
    todo = sorted(entry.imports)
    while todo:
        path = todo.pop(0)
        module = files[path]
        if module in entries or module in seen:
            continue
        seen.append(module)
        todo += sorted(_imports(module, paths, root))
    return seen


def _module_name(entry: str, module: str) -> str:
    """``module``'s import name from the entry script's folder, "" when it lies outside that folder."""
    relative = posixpath.relpath(module, posixpath.dirname(entry) or ".")
    if relative.startswith(".."):
        return ""
    name = relative[: -len(".py")].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


# ----------------------------------------------------------------------------------------- the checks
def _declared(file: _File) -> bool:
    """Whether the module already declares ``fabric: Fabric`` (a previous run of the tool did)."""
    return any(_is_declaration(s) for s in file.done.module.body)


def _is_declaration(statement: cst.CSTNode) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    return (
        isinstance(small, cst.AnnAssign)
        and small.value is None
        and isinstance(small.target, cst.Name)
        and small.target.value == FABRIC
    )


def _needs_fabric(file: _File) -> bool:
    return not has_fabric(file.done.ctx, file.done.module) and (file.done.ctx.uses_fabric or _declared(file))


def _refusal(entry: _File, module: _File) -> str:
    """Why ``module`` cannot be handed ``entry``'s Fabric object, "" when it can; adopts its precision."""
    ctx, entry_ctx = module.done.ctx, entry.done.ctx
    if not _module_name(entry.path, module.path):
        return f"it lies outside the folder of its entry script {entry.path}"
    if ctx.used_at_module_level:
        return "it uses `fabric` in code that runs when it is imported, before the entry script creates it"
    if any(
        isinstance(n, cst.Name) and n.value == FABRIC
        for s in module.done.converted.body
        if is_main_guard(s)
        for n in all_nodes(s)
    ):
        return (
            "its own `__main__` block uses `fabric`, which nothing creates when the module runs as a script"
        )
    if module.done.spawn is not None:
        return "it starts processes itself (torch.multiprocessing)"
    if ctx.precision_flag:
        return (
            f"its precision switch {ctx.precision_flag!r} lives in this module, not where Fabric is created"
        )
    bound = _bound_names(module)
    if FABRIC in bound and not _declared(module):
        return f"it uses the name `{FABRIC}` for something else"
    if not ctx.precision:
        return ""
    if entry_ctx.precision_flag:
        return (
            f"its autocast ({ctx.precision}) is always on, while the entry script {entry.path} switches its "
            f"precision with {entry_ctx.precision_flag!r}"
        )
    if entry_ctx.precision is None and entry_ctx.spawn is None:
        entry_ctx.precision = ctx.precision  # the entry creates Fabric(precision=...) for it
    if ctx.precision != entry_ctx.precision:
        return (
            f"its precision ({ctx.precision}) is not the one the entry script {entry.path} creates "
            f"({entry_ctx.precision or '32-true'})"
        )
    return ""


def _bound_names(file: _File) -> set[str]:
    """Every name the file binds or reads, in any scope (a superset of what could clash)."""
    return {n.value for n in all_nodes(file.done.module) if isinstance(n, cst.Name)}


def _handed_over(entry: _File, module: str) -> bool:
    """Whether the script already sets ``<that module>.fabric = fabric`` (a previous run did)."""
    ctx = entry.done.ctx
    for node in all_nodes(entry.done.module):
        if (
            isinstance(node, cst.Assign)
            and len(node.targets) == 1
            and isinstance(node.value, cst.Name)
            and node.value.value == FABRIC
            and ctx.is_(node.targets[0].target, f"{module}.{FABRIC}")
        ):
            return True
    return False


def _aliases(entry: _File, threaded: list[Threaded]) -> list[Threaded]:
    """Give each module a name the script does not use (``trainer`` is often a variable there)."""
    taken = _bound_names(entry)
    named = []
    for t in threaded:
        alias = base = f"{t.module.replace('.', '_')}_module"
        count = 1
        while alias in taken:
            count += 1
            alias = f"{base}{count}"
        taken.add(alias)
        named.append(Threaded(t.module, alias))
    return named


def _runs_at_import(entry: _File, module: str) -> bool:
    """Whether code of the script outside functions, classes and its ``__main__`` block uses a name it
    imported from ``module``: that code runs before the ``__main__`` block creates the Fabric object."""
    ctx = entry.done.ctx
    names: set[str] = set()
    body = entry.done.module.body
    for statement in body:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if (
                    isinstance(small, cst.ImportFrom)
                    and small.module is not None
                    and _dotted(small.module) == module
                    and not isinstance(small.names, cst.ImportStar)
                ):
                    names |= {(_dotted(a.asname.name) if a.asname else _dotted(a.name)) for a in small.names}
    for statement in body:
        if isinstance(statement, (cst.FunctionDef, cst.ClassDef)) or is_main_guard(statement):
            continue
        if is_import(statement):
            continue
        for node in all_nodes(statement):
            if isinstance(node, cst.Name) and (node.value in names or ctx.is_(node, module)):
                return True
    return False


# ------------------------------------------------------------------------------------- the module side
def _declare(file: _File, entries: list[str]) -> tuple[str, Report]:
    """The module with ``fabric: Fabric`` after its imports (unless declared), and its report."""
    ctx, converted = file.done.ctx, file.done.converted
    findings = list(ctx.findings)
    if not _declared(file):
        body = list(converted.body)
        last_import = max((i for i, s in enumerate(body) if is_import(s)), default=-1)
        added: list[cst.SimpleStatementLine | cst.BaseCompoundStatement] = []
        if not any(
            ctx.is_(n, "fabric.Fabric") for n in all_nodes(file.done.module) if isinstance(n, cst.Name)
        ):
            added.append(cst.parse_statement("from fabric import Fabric  # added by `fabric port`\n"))
        scripts = " and ".join(entries)
        declaration = cst.parse_statement(
            f"{FABRIC}: Fabric  # added by `fabric port`: set by {scripts} right after fabric.launch()\n"
        )
        added.append(declaration.with_changes(leading_lines=[cst.EmptyLine()]))
        body[last_import + 1 : last_import + 1] = added
        converted = converted.with_changes(body=body)
        original_body = file.done.module.body
        line = ctx.line(original_body[last_import]) + 1 if last_import >= 0 else 1
        findings.append(
            Finding(
                line,
                f"{FABRIC}: Fabric",
                f"this module's functions use the Fabric object of {scripts}, which hands it over after "
                "`fabric.launch()`",
                "another program that imports this module sets `module.fabric = fabric` the same way",
                converted=True,
            )
        )
    code = converted.code
    compile(code, file.path, "exec")  # the output always parses; a failure here is our bug
    return code, Report(findings)
