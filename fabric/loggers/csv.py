"""A dependency-free logger that writes metrics to ``metrics.csv``."""

from __future__ import annotations

import csv
import os
from typing import Any

from fabric.loggers.logger import Logger, _DummyExperiment
from fabric.utilities.rank_zero import global_rank


class _ExperimentWriter:
    """Buffers metric rows and writes them to ``{log_dir}/metrics.csv``; what ``CSVLogger.experiment`` returns.

    A run that resumes into an existing directory appends to the file already there (its rows are kept;
    a new metric name widens the header by rewriting the file once), so no logged row is ever lost.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.csv"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self._rows_logged = 0
        self.hparams: dict[str, Any] = {}
        os.makedirs(log_dir, exist_ok=True)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Buffer one row; ``step`` defaults to the number of rows this writer has logged before."""
        row: dict[str, Any] = {"step": self._rows_logged if step is None else step}
        for key, value in metrics.items():
            row[key] = value.item() if hasattr(value, "item") else value
        self.metrics.append(row)
        self._rows_logged += 1

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Write ``params`` (merged with those logged before) to ``hparams.csv`` as key,value rows."""
        self.hparams.update(params)
        with open(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "value"])
            for key, value in self.hparams.items():
                writer.writerow([key, value])

    def save(self) -> None:
        """Append the buffered rows to ``metrics.csv``, widening its header if a new metric appeared."""
        if not self.metrics:
            return
        file_exists = os.path.isfile(self.metrics_file_path) and os.path.getsize(self.metrics_file_path) > 0
        if file_exists and not self.metrics_keys:
            # Resuming into a directory that already holds a log: keep its columns (and its rows).
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])
        new_keys = [key for row in self.metrics for key in row if key not in self.metrics_keys]
        # sorted, as Lightning's CSVLogger writes them, so the two produce the same file
        self.metrics_keys = sorted(set(self.metrics_keys) | set(new_keys))
        if new_keys and file_exists:
            with open(self.metrics_file_path, newline="") as f:
                old_rows = list(csv.DictReader(f))
            self._write("w", old_rows + self.metrics)
        else:
            self._write("a" if file_exists else "w", self.metrics)
        self.metrics = []

    def _write(self, mode: str, rows: list[dict[str, Any]]) -> None:
        with open(self.metrics_file_path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)


class CSVLogger(Logger):
    """Write metrics to ``{root_dir}/{name}/version_{version}/metrics.csv`` (one row per ``log_dict`` call).

    Rows are buffered and written every ``flush_logs_every_n_steps`` calls and on ``save``/``finalize``.
    The file's columns are every metric name seen so far and ``step``, sorted by name (as Lightning
    writes them); a row that lacks a metric leaves its cell empty. When a new metric name appears, the file is rewritten once with the wider
    header, so columns never shift. Hyperparameters go to ``hparams.csv`` in the same directory. Only
    global rank 0 writes. Resuming into an existing version directory appends: earlier rows are kept.

    Args:
        root_dir: the directory that holds the experiments.
        name: the experiment's folder under ``root_dir``; ``None`` or ``""`` puts versions directly
            under ``root_dir``.
        version: an int (folder ``version_{version}``), a string (used as the folder name), or ``None``
            for the next free ``version_N``.
        prefix: prepended (with ``-``) to every metric name.
        flush_logs_every_n_steps: how many ``log_metrics`` calls are buffered before a write.

    Example::

        fabric = Fabric(loggers=CSVLogger("logs"))
        fabric.log_dict({"loss": loss, "accuracy": acc}, step=step)
        fabric.logger.finalize("success")
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        root_dir: str | os.PathLike = "logs",
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if flush_logs_every_n_steps < 1:
            raise ValueError(
                f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps!r}): must be a positive "
                "integer (1 writes every row at once)."
            )
        self._root_dir = os.fspath(root_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: _ExperimentWriter | None = None

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
        """The directory that holds this experiment's versions: ``{root_dir}/{name}``."""
        return os.path.join(self._root_dir, self._name)

    @property
    def log_dir(self) -> str:
        """The directory this run writes to: ``{root_dir}/{name}/version_{version}``."""
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.root_dir, version)

    @property
    def experiment(self) -> Any:
        """The writer behind this logger (created on first use, on rank 0; a no-op object on other ranks).

        Example::

            logger.experiment.log_metrics({"loss": 0.5}, step=3)
        """
        if global_rank() != 0:
            return _DummyExperiment()
        if self._experiment is None:
            self._experiment = _ExperimentWriter(self.log_dir)
        return self._experiment

    def _next_version(self) -> int:
        directory = self.root_dir
        if not os.path.isdir(directory):
            return 0
        versions = [
            int(d.split("_", 1)[1])
            for d in os.listdir(directory)
            if d.startswith("version_")
            and d.split("_", 1)[1].isdigit()
            and os.path.isdir(os.path.join(directory, d))
        ]
        return max(versions) + 1 if versions else 0

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if global_rank() != 0:
            return
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}": value for key, value in metrics.items()}
        experiment = self.experiment
        experiment.log_metrics(metrics, step)
        if (step is not None and (step + 1) % self._flush_logs_every_n_steps == 0) or len(
            experiment.metrics
        ) >= self._flush_logs_every_n_steps:
            self.save()

    def log_hyperparams(self, params: dict[str, Any] | Any) -> None:
        if global_rank() != 0:
            return
        self.experiment.log_hparams(_params_as_dict(params))

    def save(self) -> None:
        if global_rank() != 0 or self._experiment is None:
            return
        self._experiment.save()

    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return  # nothing was logged: leave no empty directory behind
        self.save()


def _params_as_dict(params: Any) -> dict[str, Any]:
    """Accept a dict or an ``argparse.Namespace``-like object (anything with ``vars()``)."""
    if isinstance(params, dict):
        return dict(params)
    try:
        return dict(vars(params))
    except TypeError:
        raise TypeError(
            f"log_hyperparams(params={params!r}): expected a dict or an argparse.Namespace, got "
            f"{type(params).__name__}. Pass `vars(args)` or a dict."
        ) from None
