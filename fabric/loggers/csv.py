"""A dependency-free logger that writes metrics to ``metrics.csv``."""

from __future__ import annotations

import csv
import os
from typing import Any

from fabric.loggers.logger import Logger
from fabric.utilities.rank_zero import global_rank


class CSVLogger(Logger):
    """Append metrics to ``{root_dir}/{name}/version_{version}/metrics.csv``.

    Rows are buffered and written every ``flush_logs_every_n_steps`` calls and at the end. When a
    new metric name appears, the file is rewritten with the wider header, so columns never shift.

    Example::

        fabric = Fabric(loggers=CSVLogger("logs"))
        fabric.log("loss", loss)
    """

    def __init__(
        self,
        root_dir: str | os.PathLike = "logs",
        name: str = "fabric_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        self._root_dir = os.fspath(root_dir)
        self._name = name
        self._version = version
        self._flush_every = flush_logs_every_n_steps
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = []
        self._written = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = self._next_version()
        return self._version

    @property
    def root_dir(self) -> str:
        return self._root_dir

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self._root_dir, self._name, version)

    def _next_version(self) -> int:
        directory = os.path.join(self._root_dir, self._name)
        if not os.path.isdir(directory):
            return 0
        versions = [
            int(d.split("_", 1)[1])
            for d in os.listdir(directory)
            if d.startswith("version_") and d.split("_", 1)[1].isdigit()
        ]
        return max(versions) + 1 if versions else 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if global_rank() != 0:
            return
        row: dict[str, Any] = {"step": step if step is not None else len(self._rows) + self._written}
        for key, value in metrics.items():
            row[key] = value.item() if hasattr(value, "item") else value
        self._rows.append(row)
        if len(self._rows) >= self._flush_every:
            self.save()

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        if global_rank() != 0:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, "hparams.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            for key, value in params.items():
                writer.writerow([key, value])

    def save(self) -> None:
        if global_rank() != 0 or not self._rows:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.log_dir, "metrics.csv")
        new_columns = [k for row in self._rows for k in row if k not in self._columns]
        columns = self._columns + list(dict.fromkeys(new_columns))
        if columns != self._columns and self._written:
            # A new metric appeared: rewrite the file with the wider header.
            with open(path, newline="") as f:
                old_rows = list(csv.DictReader(f))
            rows = old_rows + self._rows
            mode = "w"
        else:
            rows = self._rows
            mode = "a" if self._written else "w"
        with open(path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)
        self._written += len(self._rows)
        self._columns = columns
        self._rows = []
