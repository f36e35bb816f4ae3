"""A logger that writes TensorBoard event files (needs the optional extra ``tensorboard``)."""

from __future__ import annotations

import os
from typing import Any

from fabric.loggers.csv import _params_as_dict
from fabric.loggers.logger import Logger, _DummyExperiment
from fabric.utilities.rank_zero import global_rank

_INSTALL_HINT = "Install it with `pip install tensorboard` (or `pip install 'torch-fabric[tensorboard]'`)."


class TensorBoardLogger(Logger):
    """Write scalars and hyperparameters to ``{root_dir}/{name}/version_{version}[/{sub_dir}]`` for TensorBoard.

    The interface is ``CSVLogger``'s: ``log_metrics`` (through ``fabric.log``/``fabric.log_dict``),
    ``log_hyperparams``, ``save``, ``finalize``; only global rank 0 writes. The directory holds
    ``events.out.tfevents.*`` files: one scalar series per metric name, and (after ``log_hyperparams``)
    an HPARAMS entry that TensorBoard's "HParams" tab shows next to ``hp_metric``. Read them with
    ``tensorboard --logdir {root_dir}``. ``tensorboard`` is imported only when the writer is first used.

    Args:
        root_dir: the directory that holds the experiments.
        name: the experiment's folder under ``root_dir``; ``None`` or ``""`` puts versions directly under it.
        version: an int (folder ``version_{version}``), a string (the folder name), or ``None`` for the
            next free ``version_N``.
        default_hp_metric: log ``hp_metric = -1`` with the hyperparameters so the HParams tab has a
            column until you log a real ``hp_metric``.
        prefix: prepended (with ``-``) to every metric name.
        sub_dir: an extra folder below the version folder.
        **kwargs: passed to ``torch.utils.tensorboard.SummaryWriter`` (e.g. ``flush_secs``).

    Example::

        fabric = Fabric(loggers=[CSVLogger("logs"), TensorBoardLogger("logs")])
        fabric.log_dict({"loss": loss}, step=step)
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        root_dir: str | os.PathLike = "logs",
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        self._root_dir = os.fspath(root_dir)
        self._name = name or ""
        self._version = version
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: Any = None

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
        """The directory the event files go to."""
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        log_dir = os.path.join(self.root_dir, version)
        if self._sub_dir is not None:
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expandvars(os.path.expanduser(log_dir))

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def experiment(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter`` (rank 0; a no-op object on other ranks).

        Example::

            logger.experiment.add_histogram("weights", model.fc.weight, step)
        """
        if global_rank() != 0:
            return _DummyExperiment()
        if self._experiment is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ModuleNotFoundError(
                    f"TensorBoardLogger needs the `tensorboard` package. {_INSTALL_HINT}"
                ) from error
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
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
        # Outside the try below: a missing tensorboard must surface as itself, not as a bad metric value.
        experiment = self.experiment
        for key, value in metrics.items():
            tag = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, dict):
                experiment.add_scalars(tag, value, step)
            else:
                try:
                    experiment.add_scalar(tag, value, step)
                except Exception as error:
                    raise ValueError(
                        f"TensorBoardLogger.log_metrics: metric {key!r} has value {value!r} "
                        f"({type(value).__name__}); TensorBoard scalars must be numbers or one-element tensors."
                    ) from error

    def log_hyperparams(self, params: dict[str, Any] | Any, metrics: dict[str, Any] | None = None) -> None:
        """Record ``params`` (a dict or ``argparse.Namespace``; nested dicts are flattened with ``/``)."""
        if global_rank() != 0:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = _flatten(_params_as_dict(params))
        # TensorBoard accepts only numbers, strings, booleans and tensors as hyperparameter values.
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
        if metrics is None and self._default_hp_metric:
            metrics = {"hp_metric": -1}
        if metrics:
            self.log_metrics(metrics, 0)
        experiment, session_start, session_end = hparams(clean, metrics or {})
        writer = self.experiment._get_file_writer()
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)

    def save(self) -> None:
        if global_rank() != 0 or self._experiment is None:
            return
        self._experiment.flush()

    def finalize(self, status: str) -> None:
        if global_rank() != 0 or self._experiment is None:
            return
        self._experiment.flush()
        self._experiment.close()
        self._experiment = None


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat
