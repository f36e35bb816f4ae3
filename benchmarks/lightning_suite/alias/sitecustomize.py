"""Make ``lightning.fabric.X`` and ``lightning_fabric.X`` be ``fabric.X``, for one run of Lightning's tests.

Python imports this file at start-up when its folder is on ``PYTHONPATH`` (``benchmarks/lightning_suite/run.py``
puts it there only for the runs it starts, so pytest's own process and every process a test starts see
the same alias). It does nothing unless ``FABRIC_LIGHTNING_ALIAS=1``.

The alias is plain: ``lightning.fabric.strategies.ddp`` is the module object ``fabric.strategies.ddp``,
so ``mock.patch("lightning.fabric.X.name")`` patches fabric's module. ``lightning`` itself becomes an
empty package holding only ``fabric``: Lightning's trainer (``lightning.pytorch``) is not importable,
so nothing of the installed Lightning runs by accident.

Lightning's ``conftest.py`` and ``helpers/runif.py`` import a few private names of Lightning's own
test infrastructure (listed in ``_TEST_SUPPORT``). Without them not one test would be collected, so the
alias supplies stand-ins for exactly these, and only where fabric has no name of its own; a test that
uses any other missing name fails as it would for a user.

With ``FABRIC_LIGHTNING_PLACEHOLDERS=1`` every name (and module) fabric lacks is instead replaced by a
placeholder class that raises ``MissingName`` when called: a test module that imports one private name
then still runs, and each of its tests fails only if it uses a missing name. That shows the behaviour
failures hidden behind a module's imports; the plain alias is what a user's script meets.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any

_PREFIXES = ("lightning.fabric", "lightning_fabric")


def _destroy_dist_connection() -> None:
    """Stand-in for Lightning's conftest helper: end the default process group if one exists."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _runif_reasons(
    *,
    min_cuda_gpus: int = 0,
    min_torch: str | None = None,
    max_torch: str | None = None,
    min_python: str | None = None,
    bf16_cuda: bool = False,
    tpu: bool = False,
    mps: bool | None = None,
    skip_windows: bool = False,
    standalone: bool = False,
    deepspeed: bool = False,
    dynamo: bool = False,
    linux_only: bool = False,
) -> tuple[list[str], dict[str, bool]]:
    """Stand-in for Lightning's ``RunIf`` reasons, asking torch and the installed packages directly.

    It gives the same answers as Lightning's own for the same machine, so that a test is skipped in both
    runs or in neither and the two runs compare test by test.
    """
    import importlib.util

    import torch
    from packaging.version import Version

    reasons: list[str] = []
    kwargs: dict[str, bool] = {}
    torch_version = Version(Version(torch.__version__).base_version)
    if min_cuda_gpus:
        if torch.cuda.device_count() < min_cuda_gpus:
            reasons.append(f"GPUs>={min_cuda_gpus}")
        kwargs["min_cuda_gpus"] = True
    if min_torch and torch_version < Version(min_torch):
        reasons.append(f"torch>={min_torch}")
    if max_torch and torch_version >= Version(max_torch):
        reasons.append(f"torch<{max_torch}")
    if min_python and Version(".".join(map(str, sys.version_info[:3]))) < Version(min_python):
        reasons.append(f"python>={min_python}")
    if bf16_cuda and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        reasons.append("CUDA device bf16")
    if skip_windows and sys.platform == "win32":
        reasons.append("unimplemented on Windows")
    if tpu:
        if importlib.util.find_spec("torch_xla") is None:
            reasons.append("TPU")
        kwargs["tpu"] = True
    mps_available = torch.backends.mps.is_available()
    if mps is not None and mps != mps_available:
        reasons.append("MPS" if mps else "not MPS")
    if standalone:
        if os.getenv("PL_RUN_STANDALONE_TESTS", "0") != "1":
            reasons.append("Standalone execution")
        kwargs["standalone"] = True
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        reasons.append("Deepspeed")
    if dynamo:
        from torch._dynamo.eval_frame import is_dynamo_supported

        if not is_dynamo_supported():
            reasons.append("torch.dynamo")
    if linux_only and sys.platform != "linux":
        reasons.append("only linux")
    return reasons, kwargs


class _LightningDeprecationWarning(DeprecationWarning):
    """Stand-in for the warning class Lightning's conftest turns into an error for every test."""


class _NoChildProcessObserver:
    """Stand-in type for Lightning's ``_ChildProcessObserver`` (conftest only checks ``isinstance``)."""


#: module (fabric name) -> private names of Lightning's test infrastructure the conftest and RunIf import
_TEST_SUPPORT: dict[str, dict[str, Any]] = {
    "fabric.utilities.testing": {"_runif_reasons": _runif_reasons},
    "fabric.utilities.distributed": {"_destroy_dist_connection": _destroy_dist_connection},
    "fabric.strategies.launchers.subprocess_script": {"_ChildProcessObserver": _NoChildProcessObserver},
    "fabric.wrappers": {"_in_fabric_backward": False},
    # public, but named by conftest's `filterwarnings`: without it pytest refuses to run any test
    "fabric.utilities.rank_zero": {"LightningDeprecationWarning": _LightningDeprecationWarning},
}


#: packages that must exist for the modules above to be made up where fabric lacks them
_TEST_SUPPORT_PARENTS = {
    module.rsplit(".", i)[0] for module in _TEST_SUPPORT for i in range(1, module.count("."))
}


_PLACEHOLDERS = os.environ.get("FABRIC_LIGHTNING_PLACEHOLDERS") == "1"


class MissingName(AttributeError):
    """A placeholder for a name fabric lacks was used (placeholder mode only)."""


def _placeholder(module: str, name: str) -> type:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise MissingName(f"placeholder used: {module}.{name} is missing in fabric")

    return type(name, (), {"__init__": refuse, "__call__": refuse, "__module__": module})


def _with_placeholders(module: types.ModuleType) -> None:
    """Give ``module`` a module ``__getattr__`` that answers a missing name with a placeholder."""
    if getattr(module, "_lightning_suite_placeholders", False):
        return
    original = module.__dict__.get("__getattr__")
    cache: dict[str, Any] = {}

    def __getattr__(name: str) -> Any:
        if original is not None:
            try:
                return original(name)
            except AttributeError:
                pass
        if name.startswith("__"):
            raise AttributeError(name)
        if hasattr(module, "__path__") and importlib.util.find_spec(f"{module.__name__}.{name}") is not None:
            # a submodule not imported yet: `from package import submodule` must import it, not get a placeholder
            return importlib.import_module(f"{module.__name__}.{name}")
        if name not in cache:
            cache[name] = _placeholder(module.__name__, name)
        return cache[name]

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module._lightning_suite_placeholders = True  # type: ignore[attr-defined]


def _target(fullname: str) -> str | None:
    for prefix in _PREFIXES:
        if fullname == prefix or fullname.startswith(prefix + "."):
            return "fabric" + fullname[len(prefix) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)  # replaced by the real module in exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        try:
            real = importlib.import_module(self.target)
        except ModuleNotFoundError as error:
            made_up = _PLACEHOLDERS or self.target in _TEST_SUPPORT or self.target in _TEST_SUPPORT_PARENTS
            if not made_up or error.name != self.target:
                raise ModuleNotFoundError(
                    f"No module named {module.__name__!r} (alias of {self.target!r})", name=module.__name__
                ) from error
            real = types.ModuleType(self.target)  # only test-support modules (and their packages) are made up
            if self.target in _TEST_SUPPORT_PARENTS or _PLACEHOLDERS:
                real.__path__ = []
            sys.modules[self.target] = real
        for name, value in _TEST_SUPPORT.get(self.target, {}).items():
            if name not in dir(real) and not _lazy_name(real, name):
                setattr(real, name, value)
        if _PLACEHOLDERS:
            _with_placeholders(real)
        # the import system returns whatever sys.modules holds after exec_module: the fabric module itself
        sys.modules[module.__name__] = real


def _lazy_name(module: types.ModuleType, name: str) -> bool:
    try:
        getattr(module, name)
    except AttributeError:
        return False
    return True


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "lightning":
            return importlib.machinery.ModuleSpec(fullname, _EmptyPackageLoader(), is_package=True)
        dest = _target(fullname)
        if dest is None:
            if fullname.startswith("lightning."):  # lightning.pytorch, lightning.app: not part of the run
                raise ModuleNotFoundError(
                    f"No module named {fullname!r} (only lightning.fabric is aliased)", name=fullname
                )
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(dest), is_package=True)


class _EmptyPackageLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _cap_rendezvous_timeout() -> None:
    """Cap how long a process group waits for its peers: some of Lightning's tests set its private
    ``fabric._launched = True`` to skip the launch, so a 2-device fabric's first ``setup`` waits for a
    second process that never comes (for torch's 30 minutes; the wait is in C++, out of pytest-timeout's
    reach). Harness only: a test that gets here fails after ``FABRIC_LIGHTNING_PG_TIMEOUT`` seconds."""
    import datetime
    import functools

    import torch.distributed as dist

    limit = datetime.timedelta(seconds=float(os.environ.get("FABRIC_LIGHTNING_PG_TIMEOUT", "20")))
    original = dist.init_process_group

    @functools.wraps(original)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = min(kwargs.get("timeout") or limit, limit)
        return original(*args, **kwargs)

    dist.init_process_group = init_process_group


class _CapOnImport(importlib.abc.MetaPathFinder):
    """Applies :func:`_cap_rendezvous_timeout` right after ``torch.distributed`` is first imported."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "fabric.strategies.parallel":
            sys.meta_path.remove(self)
            _cap_rendezvous_timeout()
        return None


def install() -> None:
    """Put the alias first on ``sys.meta_path`` and forget any Lightning module imported before it."""
    for name in list(sys.modules):
        if name == "lightning" or name.startswith(("lightning.", "lightning_fabric")):
            del sys.modules[name]
    sys.meta_path.insert(0, _AliasFinder())
    sys.meta_path.insert(0, _CapOnImport())


if os.environ.get("FABRIC_LIGHTNING_ALIAS") == "1":
    install()
