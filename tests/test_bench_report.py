"""The benchmark runner's results.md: a run of some figures (``run.py --only``) keeps the others' tables."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
from gpu import keep_section  # noqa: E402
from harness import Check, Row, Table  # noqa: E402
from report import EARLIER, SMOKE, chart_groups, kept_figures, markdown  # noqa: E402

sys.path.remove(str(BENCH_DIR))

ORDER = ["calls", "steps", "ddp"]
GPU_SECTION = "<!-- gpu:begin -->\n## GPU\n\nmeasured elsewhere\n<!-- gpu:end -->"


def _table(title: str, raw: float, ours: float) -> Table:
    fabric = Row("fabric", samples=[ours], target=1.03)
    return Table(title, "us", [Row("raw PyTorch", samples=[raw]), fabric])


def _figures(value: float) -> dict[str, list[Table]]:
    return {
        "calls": [_table("Calls A", 100, value)],
        "steps": [_table("Steps A", 10, value), _table("Steps B", 10, value)],
        "ddp": [_table("DDP A", 10, value)],
    }


def _write(figures: dict[str, list[Table]], previous: str, ran: list[str], when: str) -> str:
    titles = {table.title for tables in figures.values() for table in tables}
    kept = kept_figures(previous, ran, titles)
    return keep_section(previous, markdown(figures, {"date": when}, when, kept, order=ORDER))


def test_partial_run_replaces_only_the_figures_that_ran() -> None:
    first = keep_section(
        GPU_SECTION, markdown(_figures(101), {"date": "day 1"}, "day 1, full run", order=ORDER)
    )
    second = _write({"steps": [_table("Steps A", 10, 55)]}, first, ["steps"], "day 2, full run")

    # the figures that did not run keep their tables and their rows of the targets summary
    assert second.count("## Calls A") == 1 and second.count("## DDP A") == 1
    assert "| Calls A | fabric | 1.010 |" in second and "| DDP A | fabric | 10.100 |" in second
    # the figure that ran is replaced whole: its new table, none of its old ones (Steps B is gone)
    assert "## Steps B" not in second and "| Steps A | fabric | 5.500 |" in second
    assert "| Steps A | fabric | 10.100 |" not in second
    # in the figures' order, each saying when it was measured; the GPU section once, at the end
    assert second.index("## Calls A") < second.index("## Steps A") < second.index("## DDP A")
    assert (
        second.index("| Calls A | fabric")
        < second.index("| Steps A | fabric")
        < second.index("| DDP A | fabric")
    )
    assert (
        "<!-- figure:calls day 1, full run -->" in second
        and "<!-- figure:steps day 2, full run -->" in second
    )
    assert "calls (kept: day 1, full run), steps (this run), ddp (kept: day 1, full run)" in second
    assert second.count("<!-- gpu:begin -->") == 1 and second.rstrip().endswith("<!-- gpu:end -->")

    # a third partial run keeps what the second kept
    third = _write({"ddp": [_table("DDP A", 10, 20)]}, second, ["ddp"], "day 3, full run")
    assert "| Calls A | fabric | 1.010 |" in third and "| Steps A | fabric | 5.500 |" in third
    assert "| DDP A | fabric | 2.000 |" in third and "| DDP A | fabric | 10.100 |" not in third
    assert third.count("## ") == third.count("\n## ") == 4 + 1  # Targets + three tables + GPU


def test_unmarked_file_keeps_its_tables_the_run_did_not_replace() -> None:
    legacy = (
        "# torch-fabric benchmarks\n\n- **date**: day 0\n\n## Targets\n\n| figure | row | ratio | target | verdict |\n"
        "| --- | --- | --- | --- | --- |\n| Old X | fabric | 1.500 | <= 1.03 | missed |\n"
        "| Calls A | fabric | 9.000 | <= 1.03 | missed |\n\n## Old X\n\nold table\n\n## Calls A\n\nold calls\n"
    )
    merged = _write({"calls": [_table("Calls A", 100, 101)]}, legacy, ["calls"], "day 1, quick run")
    assert "## Old X\n\nold table" in merged and "| Old X | fabric | 1.500 |" in merged
    assert "old calls" not in merged and "| Calls A | fabric | 9.000 |" not in merged
    assert f"<!-- figure:{EARLIER} day 0, unmarked file -->" in merged
    assert merged.index("## Calls A") < merged.index("## Old X")


def test_chart_draws_every_table_of_the_file_kept_figures_included() -> None:
    """results.png once showed only the figures of the last (partial) run: it reads the merged file now."""
    first = markdown(_figures(101), {"date": "day 1"}, "day 1, full run", order=ORDER)
    second = _write({"steps": [_table("Steps A", 10, 55)]}, first, ["steps"], "day 2, full run")
    groups = chart_groups(keep_section(GPU_SECTION, second))
    assert [group.title for group in groups] == ["Calls A", "Steps A", "DDP A"]
    # the reference row is the bar's 1.0, not a bar; fabric's row keeps its ratio and target
    assert [group.bars for group in groups] == [
        [("fabric", 1.01, 1.03)],
        [("fabric", 5.5, 1.03)],
        [("fabric", 10.1, 1.03)],
    ]


def test_a_smoke_run_writes_no_verdicts() -> None:
    """A `--quick` run on a busy machine proves a figure runs; its ratios must not read as met or missed."""
    table = _table("Sharded A", 10, 20)  # fabric 2x: would be "missed"
    table.rows[1].checks.append(Check("memory vs DDP", 0.5, 0.6, unit="x"))
    table.rows[1].extra = {"memory": table.rows[1].checks[0].cell()}
    table.extra_columns = ["memory"]
    figures = {"calls": [table]}
    full = markdown(figures, {"date": "d"}, "d, full run", order=ORDER)
    assert "| missed |" in full and "(met)" in full
    smoke = markdown(figures, {"date": "d"}, "d, quick run", order=ORDER, smoke=True)
    assert "missed" not in smoke and "met |" not in smoke and "(met)" not in smoke
    assert f"| {SMOKE} |" in smoke and f"({SMOKE})" in smoke


def test_targets_summary_shows_the_a_a_control_beside_each_verdict() -> None:
    """A verdict sits in the noise of its run: the summary gives the A/A control's ratio and range next to it."""
    from harness import CONTROL

    noisy = Table(
        "Noisy",
        "us",
        [
            Row("raw PyTorch", samples=[10.0, 10.0, 10.0]),
            Row(CONTROL, samples=[10.5, 9.0, 11.0]),
            Row("fabric", samples=[10.4, 10.6, 10.2], target=1.02),
        ],
    )
    text = markdown({"steps": [noisy]}, {"date": "day 1"}, "day 1, full run", order=ORDER)
    summary = text.split("## Targets", 1)[1].split("<!-- figure:", 1)[0]
    # the control carries no verdict of its own; fabric's row names the control's median and range
    assert f"| Noisy | {CONTROL} |" not in summary
    assert "| Noisy | fabric | 1.040 | <= 1.02 | missed | 1.050 (0.90-1.10) |" in summary
    # rows kept from a file written before the column get an empty one, so every row has six cells
    widened = kept_figures(
        "# old\n\n## Targets\n\n| figure | row | ratio | target | verdict |\n| --- | --- | --- | --- | --- |\n"
        "| Calls A | fabric | 1.010 | <= 1.03 | met |\n"
        f"| Calls A | {CONTROL} | 1.200 | <= 1.03 | missed |\n\n<!-- figure:calls day 0 -->\n\n## Calls A\n\nold\n",
        ["steps"],
        {"Noisy"},
    )
    text = markdown({"steps": [noisy]}, {"date": "day 1"}, "day 1", widened, order=ORDER)
    assert "| Calls A | fabric | 1.010 | <= 1.03 | met | — |" in text
    assert f"| Calls A | {CONTROL} |" not in text  # the control's old verdict is not carried over
