"""Every set-up and check of the project, runnable on a fresh machine: `pip install nox`, then `nox -s NAME`.

The test environment pins torch to the CPU build that these machines carry (an unpinned torch pulls a
multi-GB CUDA build); the package itself keeps a loose range.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH_PIN = "torch==2.13.0"
PYTHON = "3.11"
LINT_PATHS = ("fabric", "tests", "examples", "benchmarks", "noxfile.py")


def _install(session: nox.Session, *extras: str) -> None:
    session.install(TORCH_PIN)
    target = f".[{','.join(extras)}]" if extras else "."
    # the pin again: a dependency (e.g. the test-only `lightning`) must not replace the CPU build
    session.install("-e", target, TORCH_PIN)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default test run (CPU, several processes on 127.0.0.1 with gloo)."""
    _install(session, "test")
    session.run("python", "-m", "pytest", "-q", *session.posargs, env={"OMP_NUM_THREADS": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy on the package."""
    _install(session, "test")
    session.install("ruff==0.17.6", "mypy==2.4.1")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    session.run("mypy", "fabric")


@nox.session(python=PYTHON)
def example(session: nox.Session) -> None:
    """The main job: train the example classifier on CPU (pass `-- --devices 2` for two processes)."""
    _install(session)
    session.run("python", "examples/train_classifier.py", *session.posargs, env={"OMP_NUM_THREADS": "1"})


#: torch-xla needs exactly the torch it was built against; this is also the oldest torch we test
XLA_PINS = ("torch==2.9.0", "torch_xla==2.9.0")
#: the quick part of the suite, run again on torch 2.9 by the xla session (our lower bound is torch>=2.6);
#: the slow resume and sharded-layout tests also pass on 2.9 but stay in `tests` to keep this session short
XLA_SESSION_QUICK_TESTS = (
    "tests/test_fabric.py",
    "tests/test_connector.py",
    "tests/test_checkpoint.py",
    "tests/precision",
    "tests/checkpoint/test_io.py",
    "tests/accelerators",
    "tests/strategies/test_ddp.py",
    "tests/strategies/test_fsdp.py",
)


@nox.session(python=PYTHON)
def xla(session: nox.Session) -> None:
    """XLA through torch-xla 2.9 on XLA's CPU back end (PJRT_DEVICE=CPU, 1, 2 and 4 devices), with four
    cells of the model matrix (tests/xla/test_xla_models.py; FABRIC_XLA_MODELS=all runs all twelve), then
    the quick tests on torch 2.9.

    Its own environment: torch-xla pulls the CUDA build of torch 2.9 (about 7 GB, 3 minutes).
    """
    session.install(*XLA_PINS)
    session.install("-e", ".[test,xla,models]", *XLA_PINS)
    env = {"OMP_NUM_THREADS": "1"}
    # each test starts its own processes with PJRT_DEVICE=CPU and CPU_NUM_DEVICES=1, 2 or 4
    session.run("python", "-m", "pytest", "-q", "tests/xla", *session.posargs, env=env)
    # the documentation's XLA blocks (docs/xla.md), in this process on XLA's CPU back end with 2 devices
    session.run(
        "python", "-m", "pytest", "-q", "tests/test_docs.py", "-k", "test_code_block_runs", *session.posargs,
        env={**env, "FABRIC_DOC_SESSION": "xla", "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "2"},
    )  # fmt: skip
    session.run("python", "-m", "pytest", "-q", *XLA_SESSION_QUICK_TESTS, *session.posargs, env=env)


@nox.session(python=PYTHON)
def models(session: nox.Session) -> None:
    """The model matrix (tests/models): tiny `transformers` models on DDP, FSDP and tensor parallel, 2 CPU
    processes per cell; writes benchmarks/models.md (step time, peak memory per cell).

    Its own session: `transformers` is test-only and heavy. No network: models are built from configs.
    """
    _install(session, "test", "models")
    session.run(
        "python", "-m", "pytest", "-q", "tests/models", *session.posargs,
        env={
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "FABRIC_RUN_MODELS": "1",
            "FABRIC_MODELS_TABLE": "benchmarks/models.md",
        },
    )  # fmt: skip


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Every example in a smoke mode, outputs checked (tests/examples): porting parity, GAN, PPO, LM, plots.

    Also `fabric port`'s end-to-end runs (tests/port: the original and the converted script as processes,
    same printed numbers), which the default suite skips for time.

    About 10 minutes on 2 cores; PPO trains to CartPole's solved return on 2 processes. The lightning
    parity check runs when `lightning` installs (the test extra), and skips otherwise.
    """
    _install(session, "test", "examples")
    session.run(
        "python", "-m", "pytest", "-q", "tests/examples", "tests/port", *session.posargs,
        env={"OMP_NUM_THREADS": "1", "FABRIC_RUN_EXAMPLES": "1"},
    )  # fmt: skip


#: the documentation site's tools, pinned so a new release cannot turn a warning into a CI failure
DOCS_PINS = (
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.2",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
    "griffe==2.4.1",
)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site (docs/, mkdocs.yml) into site/, with every warning an error.

    The API reference is read from the docstrings by static analysis (griffe), so this session needs
    neither torch nor fabric installed: it stays a few seconds plus the install of the pins above.
    Its code blocks are executed by tests/test_docs.py in the default test run, not here.
    """
    session.install(*DOCS_PINS)
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        "site",
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against raw PyTorch and the peers; writes benchmarks/results.md and results.png.

    The peers (Lightning Fabric, Accelerate) and matplotlib are benchmark-only: a peer that fails to
    install is reported as "not installed" and the run goes on. Pass `-- --quick` for a smoke run.
    """
    session.install(TORCH_PIN)
    session.install("-e", ".")
    for peer in ("lightning", "accelerate", "matplotlib"):
        try:
            # the pin in the same command keeps a peer from replacing the CPU build of torch
            session.install(peer, TORCH_PIN)
        except nox.command.CommandFailed:
            session.warn(f"could not install {peer}; the benchmarks go on without it")
    try:
        # the DeepSpeed figure (issue 23); built without its C++ ops, which compile on first use
        session.install("setuptools", "wheel", "ninja")
        session.run(
            "python", "-m", "pip", "install", "--no-build-isolation", "deepspeed==0.19.8", TORCH_PIN,
            env={"DS_BUILD_OPS": "0"},
        )  # fmt: skip
    except nox.command.CommandFailed:
        session.warn("could not install deepspeed; its figure says 'unavailable'")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"OMP_NUM_THREADS": "1"})


@nox.session(python=PYTHON)
def deepspeed(session: nox.Session) -> None:
    """DeepSpeed ZeRO stages 1-3 with and without offload, on 2 CPU processes (gloo).

    DeepSpeed builds from source; `DS_BUILD_OPS=0` skips compiling its C++ ops at install time (they
    compile on first use, 35-55 s each, into TORCH_EXTENSIONS_DIR, which this session keeps in
    `.cache/torch_extensions` so that later runs reuse them).
    """
    # the models extra: the model matrix's DeepSpeed cells (tests/models, `-m deepspeed`) build transformers
    _install(session, "test", "models")
    session.install("setuptools", "wheel", "ninja")
    session.run(
        "python",
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "deepspeed==0.19.8",
        TORCH_PIN,
        env={"DS_BUILD_OPS": "0"},
    )
    extensions = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "torch_extensions")
    env = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": extensions}
    session.run("python", "-m", "pytest", "-q", "tests/strategies/deepspeed", *session.posargs, env=env)
    # the documentation's DeepSpeed blocks (docs/deepspeed.md), which need DeepSpeed installed
    session.run(
        "python", "-m", "pytest", "-q", "tests/test_docs.py", "-k", "test_code_block_runs", *session.posargs,
        env={**env, "FABRIC_DOC_SESSION": "deepspeed"},
    )  # fmt: skip
    # Real models under ZeRO (tests/models/cell.py): about a minute per cell on 2 quiet cores. CI runs two
    # cells (GPT-2's tied head under ZeRO-3, Llama under ZeRO-2); FABRIC_DS_MODELS=all runs all four.
    cells = [] if os.environ.get("FABRIC_DS_MODELS") == "all" else ["-k", DEEPSPEED_CI_CELLS]
    session.run(
        "python", "-m", "pytest", "-q", "tests/models", "-m", "deepspeed", *cells, *session.posargs,
        env={**env, "FABRIC_RUN_MODELS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


#: the model matrix's DeepSpeed cells that CI runs (pytest -k); the other two are run by hand
DEEPSPEED_CI_CELLS = "gpt2-deepspeed_stage_3 or llama-deepspeed_stage_2"


#: what the cluster session installs with apt when it is missing (Debian/Ubuntu, as root)
CLUSTER_APT = ("slurm-wlm", "munge", "openmpi-bin", "libopenmpi-dev", "iproute2")
CLUSTER_PROGRAMS = ("slurmctld", "slurmd", "munged", "mpirun", "ip")


@nox.session(python=PYTHON)
def cluster(session: nox.Session) -> None:
    """Real schedulers and hosts (tests/cluster): a two-node SLURM cluster (munge, slurmctld, two slurmd on
    this machine), OpenMPI's mpirun, and two network namespaces as two hosts.

    Needs root. Installs SLURM, munge, OpenMPI and iproute2 with apt when missing, and mpi4py with pip.
    Its test files run one after the other. The fixtures allow pytest-xdist workers (one SLURM cluster
    each), but the one measured parallel run (on a loaded 2-core machine) took 12.5 minutes, no faster,
    with one DDP job past its time limit; serial until a quiet measurement says otherwise.
    The tests start the services themselves (a pytest session fixture) and stop them at the end, also
    when a test fails; FABRIC_CLUSTER_TESTS=1 turns a missing service into a failure instead of a skip.
    """
    import shutil

    if os.geteuid() != 0:
        session.error("the cluster session needs root (SLURM daemons, network namespaces)")
    if any(shutil.which(program) is None for program in CLUSTER_PROGRAMS):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        session.run("apt-get", "install", "-y", "-q", *CLUSTER_APT, external=True, env=env)
    _install(session, "test")
    session.install("mpi4py", TORCH_PIN)
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", "tests/cluster",
        *session.posargs, env={"OMP_NUM_THREADS": "1", "FABRIC_CLUSTER_TESTS": "1"},
    )  # fmt: skip
