"""Turn a CSVLogger's metrics.csv into a PNG chart: one panel per metric, against the step.

    python examples/plot_metrics.py out/gan/logs/metrics.csv                   # writes out/gan/logs/metrics.png
    python examples/plot_metrics.py out/ppo/logs/metrics.csv --metrics mean_return_100 value_loss -o ppo.png

Empty cells (a metric not logged at that step) are skipped. Needs matplotlib (`pip install matplotlib`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os


def read_metrics(path: str) -> dict[str, tuple[list[float], list[float]]]:
    """{metric: (steps, values)} from a CSVLogger file; non-numeric and empty cells are left out."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            for key, value in row.items():
                if key == "step" or value in (None, ""):
                    continue
                try:
                    number = float(value)
                except ValueError:
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(number)
    return series


def plot(path: str, output: str, metrics: list[str] | None = None) -> str:
    """Draw the chosen (default: every) metric of ``path`` into ``output``; return ``output``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot_metrics.py needs matplotlib: pip install matplotlib") from None
    series = read_metrics(path)
    names = metrics or list(series)
    missing = [m for m in names if m not in series]
    if missing or not names:
        raise SystemExit(
            f"{path}: no numeric values for {missing or 'any metric'}; the file has {sorted(series)}"
        )
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = series[name]
        ax.plot(steps, values, linewidth=1.2, marker="." if len(values) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(os.path.relpath(path))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", help="a metrics.csv written by CSVLogger")
    parser.add_argument("-o", "--output", help="the PNG to write (default: next to the CSV, .png)")
    parser.add_argument("--metrics", nargs="+", help="which columns to draw (default: all)")
    args = parser.parse_args(argv)
    output = args.output or os.path.splitext(args.csv)[0] + ".png"
    print(f"wrote {plot(args.csv, output, args.metrics)}")


if __name__ == "__main__":
    main()
