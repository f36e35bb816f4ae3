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

from harness import CONTROL, Table

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
        "**A/A control**: in a figure that times raw PyTorch twice, the second run's ratio and range: how far "
        "the same code moved in that run, the noise a verdict sits in.",
        "",
        "| figure | row | ratio | target | verdict | A/A control |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        lines += _target_rows_of(figures[name], smoke) if name in figures else _widened(kept[name].targets)
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


def _widened(rows: Sequence[str]) -> list[str]:
    """Kept summary rows as this version writes them: an empty A/A cell where a file written before that
    column has none, and no rows of the A/A control itself (which once carried targets of its own)."""
    kept = [row for row in rows if row.split(" | ")[1:2] != [CONTROL]]
    return [row if row.count(" | ") >= 5 else row + " — |" for row in kept]


def _control(table: Table) -> str:
    """The A/A control's ratio and range in ``table`` ("—" without one): the noise of that figure's run."""
    control = next((row for row in table.rows if row.name == CONTROL), None)
    if control is None or table.ratio(control) is None:
        return "—"
    spread = table.ratio_range(control)
    return _ratio(table.ratio(control)) + ("" if spread is None else f" ({spread[0]:.2f}-{spread[1]:.2f})")


def _target_rows_of(tables: Sequence[Table], smoke: bool = False) -> list[str]:
    lines = []
    for table in tables:
        noise = _control(table)
        for row in table.rows:
            for check in row.checks:
                lines.append(
                    f"| {table.title} | {row.name}: {check.label} | {check.shown()} | "
                    f"<= {check.target:g}{check.unit} | {_judged(check.verdict, smoke)} | — |"
                )
            if row.target is None:
                continue
            verdict = table.verdict(row) if table.ratio(row) is not None else (row.note or "n/a")
            lines.append(
                f"| {table.title} | {row.name} | {_ratio(table.ratio(row))} | <= {row.target:g} | "
                f"{_judged(verdict, smoke)} | {noise} |"
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
    if "a/a control" in lowered:
        return "tab:gray"
    for family, color in _FAMILIES:
        if family in lowered:
            return color
    return "tab:gray"


@dataclass
class ChartGroup:
    """One table of results.md as the chart draws it: its title and its rows' ratios."""

    title: str
    bars: list[tuple[str, float, float | None]]  # row label, ratio, fabric's target (None: none)


def _number(cell: str) -> float | None:
    match = re.fullmatch(r"(?:<= )?(-?\d+(?:\.\d+)?)", cell.strip())
    return float(match.group(1)) if match else None


def chart_groups(results: str) -> list[ChartGroup]:
    """Every table of a results.md with a ratio column, reference row left out.

    The chart is drawn from the file rather than from the tables of one run, so that a partial run
    (``--only``) still charts the figures it kept, and ``python report.py`` redraws without measuring.
    """
    groups = []
    body = _OTHER_SECTION.sub("", results)
    for section in re.split(r"^## ", body, flags=re.M)[1:]:
        title, _, rest = section.partition("\n")
        rows = [line for line in rest.splitlines() if line.startswith("| ")]
        if title.strip() == "Targets" or len(rows) < 3:
            continue
        header = [cell.strip() for cell in rows[0].strip("|").split("|")]
        if header[0] != "implementation" or "ratio" not in header:
            continue
        bars = []
        for row in rows[3:]:  # after the header, the separator and the reference row
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            ratio = _number(cells[header.index("ratio")])
            target = _number(cells[header.index("target")]) if "target" in header else None
            if ratio is not None:
                bars.append((cells[0].replace("`", ""), ratio, target))
        if bars:
            groups.append(ChartGroup(title.replace("`", "").strip(), bars))
    return groups


def chart(results: str, path: Path, subtitle: str) -> None:
    """Draw ``results`` (a results.md) as bars: each table under its own title, fabric's targets in red.

    Every table is drawn (an earlier version drew only those of the last run, so a checkpoint-only
    run charted nothing else); the legend sits outside the axes, where it covers no bar or label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = chart_groups(results)
    count = sum(len(group.bars) + 1 for group in groups)
    figure, axis = plt.subplots(figsize=(13, max(4.0, 0.2 * count + 1.5)))
    y, ticks, labels, headings = count, [], [], []
    widest = 1.0
    for group in groups:
        y -= 1
        ticks.append(y)
        labels.append(group.title if len(group.title) <= 95 else group.title[:94] + "…")
        headings.append(True)
        for label, ratio, target in group.bars:
            y -= 1
            # a row with a target is fabric's, whatever its label says ("sync save")
            axis.barh(y, ratio, color=_color("fabric" if target is not None else label), height=0.8)
            axis.text(ratio, y, f" {ratio:.2f}", va="center", fontsize=6)
            if target is not None:
                axis.plot([target, target], [y - 0.45, y + 0.45], color="red", linewidth=1.5)
            ticks.append(y)
            labels.append(label if len(label) <= 60 else label[:59] + "…")
            headings.append(False)
            widest = max(widest, ratio, target or 0.0)
    axis.set_yticks(ticks)
    axis.set_yticklabels(labels, fontsize=6)
    for tick, heading in zip(axis.get_yticklabels(), headings):
        if heading:
            tick.set_fontweight("bold")
    axis.set_ylim(-0.5, count - 0.5)
    axis.set_xlim(0, widest * 1.12)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xlabel(
        "ratio to the table's reference row (raw PyTorch, import torch, torchrun, torch.save/torch.load)"
    )
    axis.set_title(f"torch-fabric: ratio to the reference (red: fabric's target)\n{subtitle}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for _, color in _FAMILIES]
    names = [family for family, _ in _FAMILIES]
    axis.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def subtitle_of(results: str) -> str:
    """The chart's subtitle from a results.md header: the machine and the date of its run."""
    fields = dict(re.findall(r"^- \*\*(\w+)\*\*: (.*)$", results, flags=re.M))
    return f"{fields.get('machine', 'unknown machine')}; run of {fields.get('date', 'unknown date')}"


if __name__ == "__main__":
    # Redraw the chart from a results.md without measuring anything:
    # python benchmarks/report.py [benchmarks/results.md] [benchmarks/results.png]
    import sys

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.md")
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    text = source.read_text()
    chart(text, target, subtitle_of(text))
    print(f"wrote {target}")
