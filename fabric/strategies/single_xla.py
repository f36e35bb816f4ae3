"""Lightning's ``strategies.single_xla``: one XLA device (``SingleDeviceXLAStrategy``) is our ``SingleXLAStrategy``."""

from fabric.strategies.xla_single import SingleXLAStrategy

#: Lightning's name for :class:`~fabric.strategies.xla_single.SingleXLAStrategy`
SingleDeviceXLAStrategy = SingleXLAStrategy

__all__ = ["SingleDeviceXLAStrategy"]
