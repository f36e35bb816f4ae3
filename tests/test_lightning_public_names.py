"""Every public name of ``lightning.fabric`` imports from the same module path under ``fabric`` (issue 20).

The names come from the installed Lightning (a test dependency), read in a subprocess so that its
import-time patches stay out of this process. A module's public names are its ``__all__`` or, without
one, the public classes and functions it defines (for a package: also those it re-exports from
Lightning). A name for an engine fabric drives differently must still import: constructing it says
what to use instead.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

pytest.importorskip("lightning.fabric")

_ENUMERATE = r"""
import importlib, inspect, json, pkgutil
import lightning.fabric as root

modules = ["lightning.fabric"] + [
    info.name for info in pkgutil.walk_packages(root.__path__, "lightning.fabric.")
    if not any(part.startswith("_") for part in info.name.split("."))
]
names = {}
for name in modules:
    try:
        module = importlib.import_module(name)
    except Exception:  # an optional engine Lightning itself cannot import here
        continue
    public = getattr(module, "__all__", None)
    if public is None:
        package = hasattr(module, "__path__")
        public = [
            key for key, value in vars(module).items()
            if (inspect.isclass(value) or inspect.isfunction(value))
            and (value.__module__ == name or (package and value.__module__.startswith("lightning.fabric")))
        ]
    public = sorted(key for key in public if not key.startswith("_"))
    if public:
        names[name] = public
print(json.dumps(names))
"""


@pytest.fixture(scope="module")
def lightning_names() -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", _ENUMERATE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_public_lightning_name_resolves_at_the_same_path(lightning_names: dict[str, list[str]]) -> None:
    assert sum(map(len, lightning_names.values())) > 100  # the enumeration found Lightning's surface
    missing = []
    for module_name, names in lightning_names.items():
        ours = "fabric" + module_name[len("lightning.fabric") :]
        try:
            module = importlib.import_module(ours)
        except ImportError as error:
            missing.append(f"{ours} (module: {error})")
            continue
        missing.extend(f"{ours}.{name}" for name in names if not hasattr(module, name))
    assert not missing, "Lightning names with no fabric counterpart:\n" + "\n".join(missing)


def test_lightning_module_paths_of_moved_packages() -> None:
    from fabric.environments import SLURMEnvironment
    from fabric.launchers.multiprocessing import MultiprocessingLauncher
    from fabric.loggers.csv import CSVLogger
    from fabric.plugins.environments.slurm import SLURMEnvironment as LightningPathSLURM
    from fabric.plugins.io.torch_io import TorchCheckpointIO
    from fabric.plugins.precision.double import DoublePrecision
    from fabric.precision import DoublePrecision as OurDouble
    from fabric.strategies.launchers.multiprocessing import MultiprocessingLauncher as LightningPathLauncher
    from fabric.utilities.distributed import DistributedSamplerWrapper
    from fabric.utilities.distributed_data import DistributedSamplerWrapper as OurWrapper

    # thin re-exports: the same objects, so isinstance checks and mock.patch targets agree
    assert LightningPathSLURM is SLURMEnvironment and DoublePrecision is OurDouble
    assert LightningPathLauncher is MultiprocessingLauncher and DistributedSamplerWrapper is OurWrapper
    assert importlib.import_module("fabric.loggers.csv_logs").CSVLogger is CSVLogger
    assert TorchCheckpointIO is importlib.import_module("fabric.checkpoint.checkpoint_io").TorchCheckpointIO


@pytest.mark.parametrize(
    ("path", "name", "hint"),
    [
        ("fabric.plugins.precision", "XLAPrecision", "accelerator='tpu'"),
        ("fabric.plugins.precision", "BitsandbytesPrecision", "bitsandbytes"),
        ("fabric.plugins.precision", "TransformerEnginePrecision", "fp8_autocast"),
        ("fabric.plugins.environments", "XLAEnvironment", "XLA strategy"),
        ("fabric.plugins.io", "XLACheckpointIO", "fabric.save"),
    ],
)
def test_names_of_engines_we_drive_differently_import_and_say_what_to_use(
    path: str, name: str, hint: str
) -> None:
    cls = getattr(importlib.import_module(path), name)
    with pytest.raises(TypeError, match=f"fabric has no {name}.*{hint}"):
        cls("bf16-true")


def test_importing_fabric_stays_free_of_the_lightning_paths() -> None:
    code = (
        "import sys, fabric; "
        "print(sorted(m for m in sys.modules if m.startswith(('fabric.plugins', 'fabric._graveyard', "
        "'fabric.strategies.dp', 'fabric.utilities.distributed'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
