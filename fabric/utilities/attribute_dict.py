"""A dict whose keys are also attributes (hyperparameters: ``hparams.lr``)."""

from __future__ import annotations

from typing import Any


class AttributeDict(dict):
    """``dict`` with attribute access: ``AttributeDict(lr=0.1).lr == 0.1``; ``d.x = 1`` sets ``d["x"]``.

    Example::

        hparams = AttributeDict(lr=1e-3, batch_size=32)
        hparams.epochs = 10
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"'AttributeDict' object has no attribute {key!r}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def __repr__(self) -> str:
        if not self:
            return ""
        width = max(len(str(k)) for k in self)
        return "\n".join(f"{f'{k!r}':>{width + 2}}: {v!r}" for k, v in sorted(self.items(), key=str))
