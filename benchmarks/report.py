"""Writing the results: ``results.md`` (a header, a summary of the targets, a table per figure) and
``results.png`` (the ratios to the reference, as horizontal bars)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness import Table

_UNIT_FORMAT = {"calls": "{:.1f}", "us": "{:.0f} µs", "ms": "{:.2f} ms", "s": "{:.3f} s", "MB": "{:.0f} MB"}
_FAMILIES = (("lightning", "tab:purple"), ("accelerate", "tab:orange"), ("fabric", "tab:blue"))


def _value(table: Table, value: float | None) -> str:
    return "—" if value is None else _UNIT_FORMAT[table.unit].format(value)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(tables: Sequence[Table], header: dict[str, str]) -> str:
    lines = ["# torch-fabric benchmarks", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    lines += [
        "",
        "**ratio**: the median over rounds of (implementation / reference row of the same round); the "
        "reference is the first row of each table; below 1 is faster or smaller. **range**: the lowest and "
        "highest single-round ratio; a wide range means a noisy machine. **CPU ratio**: the same on CPU "
        "time (user + system): of the measuring process for 1-process steps, which leaves out time spent "
        "preempted by other work on the machine; of all processes for multi-process rows, which shows "
        "processes that spin. The targets are judged on the wall-clock ratio. Targets apply to fabric's "
        "rows only. **Calls per step** tables count function calls, which is exact: one run, no range.",
        "",
        "## Targets",
        "",
        "| figure | row | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for table in tables:
        for row in table.rows:
            for check in row.checks:
                value = "—" if check.value is None else f"{check.value:.1f}{check.unit}"
                lines.append(
                    f"| {table.title} | {row.name}: {check.label} | {value} | <= {check.target:g}{check.unit} | "
                    f"{check.verdict} |"
                )
            if row.target is None:
                continue
            verdict = table.verdict(row) if table.ratio(row) is not None else (row.note or "n/a")
            lines.append(
                f"| {table.title} | {row.name} | {_ratio(table.ratio(row))} | <= {row.target:g} | {verdict} |"
            )
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
                table.verdict(row) or "—",
                *(row.extra.get(column, "") for column in table.extra_columns),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
