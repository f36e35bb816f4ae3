"""Writing the results: ``results.md`` (a header, a summary of the targets, a table per figure) and
``results.png`` (the ratios to the reference, as horizontal bars).

``results.md`` marks where each figure's tables begin (``<!-- figure:NAME WHEN -->``), so that a run of
some figures (``run.py --only``) replaces only their tables and keeps the others, with their rows of the
targets summary, from the file it rewrites.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import Table

_UNIT_FORMAT = {"calls": "{:.1f}", "us": "{:.0f} µs", "ms": "{:.2f} ms", "s": "{:.3f} s", "MB": "{:.0f} MB"}
_FAMILIES = (
    ("lightning", "tab:purple"),
    ("accelerate", "tab:orange"),
    ("fabric", "tab:blue"),
    ("a/a control", "tab:gray"),
)


def _value(table: Table, value: float | None) -> str:
    return "—" if value is None else _UNIT_FORMAT[table.unit].format(value)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


_FIGURE_MARK = re.compile(r"^<!-- figure:([\w-]+) (.*?) -->$", re.M)
#: a section measured elsewhere (``gpu.keep_section`` appends them again after the figures)
_OTHER_SECTION = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.S)
_TITLE = re.compile(r"^## (.+)$", re.M)
#: the name under which the tables of a results.md written before the figure marks are kept
EARLIER = "earlier"


@dataclass
class KeptFigure:
    """A figure that did not run this time, as the previous ``results.md`` had it."""

    when: str  # when it was measured (the date and kind of the run that wrote it)
    sections: list[str] = field(default_factory=list)  # its "## title" sections, as written
    targets: list[str] = field(default_factory=list)  # its rows of the targets summary, as written


def kept_figures(previous: str, ran: Collection[str], new_titles: Collection[str]) -> dict[str, KeptFigure]:
    """The figures of ``previous`` (a results.md) that this run does not replace, by name.

    A figure that ran (a name in ``ran``) is dropped whole; a kept table whose title this run produced
    again is dropped too. A file without figure marks (written before them) keeps its tables under
    :data:`EARLIER`.
    """
    body = _OTHER_SECTION.sub("", previous)
    target_rows = _target_rows(body)
    marks = list(_FIGURE_MARK.finditer(body))
    blocks: list[tuple[str, str, str]] = []  # name, when, text
    if marks:
        for index, mark in enumerate(marks):
            end = marks[index + 1].start() if index + 1 < len(marks) else len(body)
            blocks.append((mark.group(1), mark.group(2), body[mark.end() : end]))
    elif "\n## " in body:
        when = re.search(r"^- \*\*date\*\*: (.+)$", body, re.M)
        blocks.append((EARLIER, f"{when.group(1) if when else 'unknown date'}, unmarked file", body))
    kept = {}
    for name, when, text in blocks:
        if name in ran:
            continue
        sections = [
            section.strip("\n")
            for section in re.split(r"(?m)^(?=## )", text)
            if section.startswith("## ")
            and _title(section) != "Targets"
            and _title(section) not in new_titles
        ]
        if sections:
            titles = {_title(section) for section in sections}
            rows = [row for row in target_rows if row.split(" | ", 1)[0].removeprefix("| ") in titles]
            kept[name] = KeptFigure(when, sections, rows)
    return kept


def _title(section: str) -> str:
    match = _TITLE.match(section)
    return match.group(1).strip() if match else ""


def _target_rows(body: str) -> list[str]:
    """The rows of the targets summary (without its head), as written."""
    match = re.search(r"^## Targets\n(.*?)(?=^## |\Z)", body, re.M | re.S)
    if not match:
        return []
    rows = [line for line in match.group(1).splitlines() if line.startswith("| ")]
    return rows[2:]  # the column names and the separator


def markdown(
    figures: Mapping[str, Sequence[Table]],
    header: dict[str, str],
    when: str = "this run",
    kept: Mapping[str, KeptFigure] | None = None,
    order: Sequence[str] = (),
    smoke: bool = False,
) -> str:
    """The whole results.md: the figures that ran (``figures``) and those kept from before (``kept``).

    Figures are written in ``order`` (names missing there go last); each starts with a mark that says
    when it was measured. ``smoke`` (a ``--quick`` run) writes :data:`SMOKE` where a verdict would be:
    a few rounds on a busy machine prove that a figure runs, not whether a target is met.
    """
    kept = kept or {}
    names = [name for name in order if name in figures or name in kept]
    names += [name for name in (*figures, *kept) if name not in names]
    lines = ["# torch-fabric benchmarks", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    if kept:
        measured = ", ".join(
            f"{name} ({'this run' if name in figures else 'kept: ' + kept[name].when})" for name in names
        )
        lines.append(f"- **figures**: {measured}")
    lines += [
        "",
        "**ratio**: the median over rounds of (implementation / reference row of the same round); the "
        "reference is the first row of each table; below 1 is faster or smaller. **range**: the lowest and "
        "highest single-round ratio; a wide range means a noisy machine. **CPU ratio**: the same on CPU "
        "time (user + system): of the measuring process for 1-process steps, which leaves out time spent "
        "preempted by other work on the machine; of all processes for multi-process rows, which shows "
        "processes that spin. The targets are judged on the wall-clock ratio. Targets apply to fabric's "
        "rows only. **Calls per step** tables count function calls and bytecode instructions, which is exact: one "
        "run, no range.",
        "",
        "## Targets",
        "",
        "| figure | row | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in names:
        lines += _target_rows_of(figures[name], smoke) if name in figures else kept[name].targets
    for name in names:
        if name not in figures:
            lines += ["", f"<!-- figure:{name} {kept[name].when} -->"]
            for section in kept[name].sections:
                lines += ["", section]
            continue
        lines += ["", f"<!-- figure:{name} {when} -->"]
        lines += _tables(figures[name], smoke)
    return "\n".join(lines) + "\n"


SMOKE = "loaded smoke run, not a verdict"


def _judged(verdict: str, smoke: bool) -> str:
    """A verdict cell (or a cell that ends in one, like a check's), unless a smoke run wrote it."""
    if not smoke:
        return verdict
    for word in ("met", "missed"):
        if verdict == word:
            return SMOKE
        verdict = verdict.replace(f"({word})", f"({SMOKE})")
    return verdict


def _target_rows_of(tables: Sequence[Table], smoke: bool = False) -> list[str]:
    lines = []
    for table in tables:
        for row in table.rows:
            for check in row.checks:
                value = "—" if check.value is None else f"{check.value:.1f}{check.unit}"
                lines.append(
                    f"| {table.title} | {row.name}: {check.label} | {value} | <= {check.target:g}{check.unit} | "
                    f"{_judged(check.verdict, smoke)} |"
                )
            if row.target is None:
                continue
            verdict = table.verdict(row) if table.ratio(row) is not None else (row.note or "n/a")
            lines.append(
                f"| {table.title} | {row.name} | {_ratio(table.ratio(row))} | <= {row.target:g} | "
                f"{_judged(verdict, smoke)} |"
            )
    return lines


def _tables(tables: Sequence[Table], smoke: bool = False) -> list[str]:
    lines: list[str] = []
    for table in tables:
        lines += ["", f"## {table.title}", ""]
        if table.description:
            lines += [table.description, ""]
        cpu = ["CPU ratio"] if table.has_cpu_time else []
        columns = [
            "implementation",
            "median",
            "ratio",
            "range",
            *cpu,
            "target",
            "verdict",
            *table.extra_columns,
        ]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("| " + " | ".join("---" for _ in columns) + " |")
        for row in table.rows:
            spread = table.ratio_range(row)
            cells = [
                row.name,
                _value(table, row.median) if row.median is not None else (row.note or "n/a"),
                _ratio(table.ratio(row)),
                "—" if spread is None or row is table.reference else f"{spread[0]:.2f}-{spread[1]:.2f}",
                *([_ratio(table.cpu_ratio(row))] if cpu else []),
                "—" if row.target is None else f"<= {row.target:g}",
                _judged(table.verdict(row), smoke) or "—",
                *(_judged(row.extra.get(column, ""), smoke) for column in table.extra_columns),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _color(name: str) -> str:
    lowered = name.lower()
    for family, color in _FAMILIES:
        if family in lowered:
            return color
    return "tab:gray"


def chart(tables: Sequence[Table], path: Path, subtitle: str) -> None:
    """One horizontal bar per non-reference row with a ratio; a red tick where fabric has a target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, str, float, float | None, str]] = []  # group, row, ratio, target, color
    for table in tables:
        if not table.chart_label:
            continue
        for row in table.rows[1:]:
            ratio = table.ratio(row)
            if ratio is not None:
                bars.append((table.chart_label, row.label, ratio, row.target, _color(row.name)))
    height = max(4.0, 0.22 * len(bars) + 1.5)
    figure, axis = plt.subplots(figsize=(10, height))
    positions = list(range(len(bars)))[::-1]
    for y, (_, _, ratio, target, color) in zip(positions, bars):
        axis.barh(y, ratio, color=color, height=0.8)
        axis.text(ratio, y, f" {ratio:.2f}", va="center", fontsize=7)
        if target is not None:
            axis.plot([target, target], [y - 0.45, y + 0.45], color="red", linewidth=1.5)
    axis.set_yticks(positions)
    axis.set_yticklabels([f"{group} · {name}" for group, name, *_ in bars], fontsize=7)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xlabel("ratio to the reference (raw PyTorch, import torch, torchrun, torch.save/torch.load)")
    axis.set_title(f"torch-fabric: ratio to the reference (red: fabric's target)\n{subtitle}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for _, color in _FAMILIES]
    axis.legend(handles, [family for family, _ in _FAMILIES], loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
