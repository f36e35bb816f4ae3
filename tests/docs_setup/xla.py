# What the XLA fragment assumes: the Fabric class (run by `nox -s xla`, with PJRT_DEVICE=CPU: XLA's CPU back end).
from fabric import Fabric  # noqa: F401 (the fragment uses it)
