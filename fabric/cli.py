"""``fabric run [options] SCRIPT [ARGS]``: start a script on one or many processes.

(Also ``fabric consolidate`` for sharded checkpoints and ``fabric port`` to convert a plain PyTorch
script, see ``fabric/port``.)

The options are validated first (a bad value fails before any process starts), then written to the
environment as ``FABRIC_*`` variables, which a plain ``Fabric()`` in the script picks up. A value in
the script that contradicts an option is an error raised by the script's ``Fabric(...)``. Everything
after SCRIPT goes to the script untouched.

On one node without restarts (the common case) this process starts the workers itself, with the
variables torchrun gives its workers, and never imports torch (``fabric.launchers.direct``): the
workers start about a second sooner than under torchrun, whose agent imports torch first. With
several nodes, or with ``--max-restarts N``, torchrun (``torch.distributed.run``) starts and watches
the processes: it does the rendezvous between nodes and restarts every process after a failure, up
to N times; with ``fabric.checkpoint.CheckpointManager`` the script resumes from its last checkpoint.

Example::

    fabric run --accelerator cpu --devices 2 train.py --lr 0.1
    fabric run --devices 1 --num-nodes 2 --node-rank 0 --main-address 10.0.0.1 --main-port 29400 train.py
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from fabric.utilities.choices import ACCELERATOR_NAMES, PRECISION_ALIASES, PRECISIONS, STRATEGY_NAMES

_DEFAULT_MULTI_NODE_PORT = 29400
#: torchrun's own default for its static rendezvous, in seconds
_DEFAULT_JOIN_TIMEOUT = 600.0


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="fabric", description="torch-fabric command line")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run a script on one or many processes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--accelerator",
        default="auto",
        choices=ACCELERATOR_NAMES,
        help="the hardware to run on (default: auto: xla, cuda or mps when available, in that order, else cpu)",
    )
    run.add_argument("--strategy", default="auto", help="a strategy name, e.g. 'ddp' (default: auto)")
    run.add_argument("--devices", default="1", help="devices per node: a number, '0,1', -1 or 'auto'")
    run.add_argument(
        "--num-nodes",
        "--num_nodes",
        type=int,
        default=1,
        dest="num_nodes",
        help="number of machines taking part; each runs this command (default: 1)",
    )
    run.add_argument(
        "--node-rank",
        "--node_rank",
        type=int,
        default=0,
        dest="node_rank",
        help="this machine's index among the nodes, 0..num-nodes-1 (default: 0)",
    )
    run.add_argument(
        "--main-address",
        "--main_address",
        default="127.0.0.1",
        dest="main_address",
        help="host name or IP of the node-rank-0 machine, which all nodes connect to (default: 127.0.0.1)",
    )
    run.add_argument(
        "--main-port",
        "--main_port",
        type=int,
        default=None,
        dest="main_port",
        help="TCP port on the main address for the rendezvous (default: a free port on one node, "
        f"{_DEFAULT_MULTI_NODE_PORT} with several)",
    )
    run.add_argument("--precision", default=None, help=f"one of {', '.join(PRECISIONS)}")
    run.add_argument(
        "--max-restarts",
        "--max_restarts",
        type=int,
        default=0,
        dest="max_restarts",
        help="restart all processes after a failure, up to this many times (default: 0)",
    )
    run.add_argument(
        "--join-timeout",
        "--join_timeout",
        type=float,
        default=_DEFAULT_JOIN_TIMEOUT,
        dest="join_timeout",
        help="with several nodes: seconds to wait for all nodes to join before failing (default: 600)",
    )
    run.add_argument("script", help="the script to run")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    consolidate = commands.add_parser(
        "consolidate",
        help="turn a sharded checkpoint directory into one file that torch.load reads",
        description="Merge the shards of a checkpoint directory written by FSDP or model-parallel runs "
        "into one file (full tensors), readable by torch.load and by Fabric.load on any strategy.",
    )
    consolidate.add_argument("checkpoint_dir", help="the sharded checkpoint directory")
    consolidate.add_argument(
        "output", nargs="?", default=None, help="the file to write (default: CHECKPOINT_DIR.consolidated)"
    )
    consolidate.add_argument(
        "--output_file",
        "--output-file",
        dest="output_file",
        default=None,
        help="the file to write (Lightning's name)",
    )
    port = commands.add_parser(
        "port",
        help="convert a plain PyTorch training script to fabric, and report what it left",
        description="Rewrite device moves, the process group, DDP wrapping, bf16 autocast, backward, rank "
        "checks, collectives and seeding of a PyTorch script into fabric calls, keeping everything else "
        "byte for byte; the report (on stderr) lists each place left as is, with the change to make. "
        "Several files or a folder convert together: the script creates the Fabric object and hands it to "
        "the modules it imports (fabric port main.py trainer.py -o OUTDIR). "
        "Needs libcst (pip install 'torch-fabric[port]').",
    )
    port.add_argument(
        "script",
        nargs="+",
        help="the PyTorch script to convert; or several files of one program (the script and the modules it "
        "imports), or a folder of them, converted together",
    )
    port.add_argument(
        "-o",
        "--output",
        default=None,
        help="write the converted script here (default: stdout); with several files or a folder, the folder "
        "to write the converted .py files to, at the same relative paths",
    )
    port.add_argument("--diff", action="store_true", help="print a unified diff instead of the script")
    port.add_argument(
        "--check", action="store_true", help="exit with 1 when something could not be converted"
    )
    return parser, run


def _processes_per_node(accelerator: str, devices: str) -> int:
    if accelerator == "cpu" or (accelerator == "auto" and _only_cpu()):
        # imports torch: the CLI loads it only for a command that needs it
        from fabric.utilities.device_parser import parse_cpu_count

        return parse_cpu_count(_devices_value(devices))
    # imports torch: the CLI loads it only for a command that needs it
    from fabric.accelerators import ACCELERATORS
    from fabric.connector import Connector

    resolved = Connector._resolve_accelerator(accelerator, "auto")
    cls = ACCELERATORS.get(resolved.name, type(resolved))
    return len(cls.get_parallel_devices(cls.parse_devices(_devices_value(devices))))


def _only_cpu() -> bool:
    """Whether ``accelerator="auto"`` certainly means the CPU here, decided without importing torch.

    True only on Linux with neither torch-xla installed nor a GPU device node (NVIDIA, AMD ROCm, WSL's
    GPU bridge). Anything else asks the connector, which imports torch to count devices: slower, and
    always right. The launcher process then stays free of torch in the common CPU case.
    """

    if sys.platform != "linux" or importlib.util.find_spec("torch_xla") is not None:
        return False
    return not any(glob.glob(pattern) for pattern in ("/dev/nvidia*", "/dev/kfd", "/dev/dxg"))


def _devices_value(devices: str) -> int | str:
    try:
        return int(devices)
    except ValueError:
        return devices


def _validate(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> int:
    if args.num_nodes < 1:
        error(f"--num-nodes={args.num_nodes}: must be 1 or more.")
    if not 0 <= args.node_rank < args.num_nodes:
        error(
            f"--node-rank={args.node_rank}: must lie in 0..{args.num_nodes - 1} for --num-nodes={args.num_nodes}."
        )
    if args.max_restarts < 0:
        error(f"--max-restarts={args.max_restarts}: must be 0 or more.")
    address = args.main_address
    if not address.strip() or any(char.isspace() or char in "/@" for char in address):
        error(
            f"--main-address={address!r}: must be the host name or IP address of the node-rank-0 machine (e.g. "
            f"10.0.0.1 or node001), without spaces, scheme or port."
        )
    if not args.join_timeout > 0:
        error(f"--join-timeout={args.join_timeout}: must be a number of seconds above 0.")
    if args.main_port is not None and not 1 <= args.main_port <= 65535:
        error(f"--main-port={args.main_port}: must be a TCP port, 1..65535.")
    if args.precision is not None:
        name = PRECISION_ALIASES.get(args.precision, args.precision)
        if name not in PRECISIONS:
            error(
                f"--precision={args.precision!r}: allowed {', '.join(PRECISIONS)} (aliases 32, 64, 16, bf16)."
            )
    if args.strategy != "auto":
        if args.strategy not in STRATEGY_NAMES:
            error(
                f"--strategy={args.strategy!r}: allowed auto, {', '.join(STRATEGY_NAMES)}. Strategies that "
                f"start their own processes (ddp_spawn, ddp_fork) cannot run under torchrun."
            )
        if args.strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook"):
            error(
                f"--strategy={args.strategy!r} starts its own processes; under `fabric run` use --strategy ddp."
            )
    if not os.path.isfile(args.script):
        error(f"the script {args.script!r} does not exist.")
    if args.accelerator in ("tpu", "xla"):
        error(
            f"--accelerator={args.accelerator!r}: XLA runs one process per host that drives all its devices "
            f"(SPMD), so there is nothing to launch: run `python {args.script}` (on a TPU pod, on every host)."
        )
    try:
        return _processes_per_node(args.accelerator, args.devices)
    except (ValueError, TypeError, RuntimeError) as err:
        error(f"--accelerator={args.accelerator!r} --devices={args.devices!r}: {err}")
    raise AssertionError("unreachable")


def _consolidate(directory: str, output: str | None, error: Callable[[str], NoReturn]) -> None:
    # imports torch: the CLI loads it only for a command that needs it
    from fabric.checkpoint.consolidate import consolidate, default_output
    from fabric.checkpoint.io import CheckpointError

    if not os.path.isdir(directory):
        error(f"consolidate: {directory!r} is not a directory; pass the sharded checkpoint directory.")
    output = output if output is not None else default_output(directory)
    if os.path.isdir(output):
        error(f"consolidate: the output {output!r} is a directory; pass a file path.")
    try:
        consolidate(directory, output)
    except CheckpointError as err:
        error(f"consolidate: {err}")
    print(f"wrote {output}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``fabric`` command."""
    parser, run_parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "consolidate":
        if args.output is not None and args.output_file is not None and args.output != args.output_file:
            parser.error("consolidate: the output was given twice (OUTPUT and --output_file); pass one.")
        _consolidate(args.checkpoint_dir, args.output or args.output_file, parser.error)
        return
    if args.command == "port":
        # needs libcst (optional): only `fabric port` loads it
        from fabric.port.command import port as port_script

        sys.exit(port_script(args.script, args.output, args.diff, args.check, parser.error))
    nproc = _validate(args, run_parser.error)

    if args.main_port is None:
        if args.num_nodes > 1:
            port = _DEFAULT_MULTI_NODE_PORT
        else:
            # lazy: only `fabric run` on one node needs it
            from fabric.environments._ports import reserve_free_port

            # Held (bound, not listening) until this process exits, so that nothing else takes the port
            # while the workers import torch; rank 0's store binds it all the same (see reserve_free_port).
            reservation = reserve_free_port(args.main_address if args.main_address == "127.0.0.1" else "")
            port = reservation.getsockname()[1]
    else:
        port = args.main_port

    os.environ["FABRIC_ACCELERATOR"] = args.accelerator
    os.environ["FABRIC_STRATEGY"] = args.strategy
    os.environ["FABRIC_DEVICES"] = str(args.devices)
    os.environ["FABRIC_NUM_NODES"] = str(args.num_nodes)
    if args.precision is not None:
        os.environ["FABRIC_PRECISION"] = str(PRECISION_ALIASES.get(args.precision, args.precision))

    if args.num_nodes == 1 and args.max_restarts == 0:
        # One node, no restarts: start the processes from here, with torchrun's variables, without
        # importing torch in this process (see fabric/launchers/direct.py).
        from fabric.launchers.direct import launch

        sys.exit(launch([args.script, *args.script_args], nproc, args.main_address, port))

    # imports torch: the CLI loads it only for a command that needs it
    from torch.distributed import DistNetworkError, DistStoreError
    from torch.distributed.run import main as torchrun

    torchrun_args = [
        f"--nproc-per-node={nproc}",
        f"--nnodes={args.num_nodes}",
        f"--node-rank={args.node_rank}",
        f"--master-addr={args.main_address}",
        f"--master-port={port}",
        f"--max-restarts={args.max_restarts}",
        f"--rdzv-conf=timeout={max(1, round(args.join_timeout))}",
        # `--` ends torchrun's options: the script's own (`--log x`) would otherwise be parsed as
        # abbreviations of torchrun's (`--log-dir`), or clash with them.
        "--",
        args.script,
        *args.script_args,
    ]
    try:
        sys.exit(torchrun(torchrun_args))
    except (DistNetworkError, DistStoreError) as err:
        # torchrun's agent raises these only while it meets the other nodes (its static rendezvous)
        sys.exit(_join_failure(args, port, err))


def _join_failure(args: argparse.Namespace, port: int, err: Exception) -> str:
    """The error for nodes that did not meet within ``--join-timeout``: who is missing and what to check."""
    endpoint = f"{args.main_address}:{port}"
    timeout = f"{args.join_timeout:g} s (--join-timeout)"
    if args.node_rank == 0:
        others = (
            "node rank 1" if args.num_nodes == 2 else f"one or more of node ranks 1..{args.num_nodes - 1}"
        )
        missing = (
            f"node rank 0 waited {timeout} at {endpoint} and {others} did not join"
            f" ({err}). Start `fabric run ... --num-nodes {args.num_nodes} --node-rank N --main-address"
            f" {args.main_address} --main-port {port}` on every other machine, check that each reaches"
            f" {endpoint} (firewall, address), or raise --join-timeout."
        )
    else:
        missing = (
            f"node rank {args.node_rank} could not meet node rank 0 at {endpoint} within {timeout} ({err})."
            f" Check that `fabric run ... --node-rank 0` runs on the machine {args.main_address!r}, that this"
            f" machine reaches {endpoint}, and that --main-address/--main-port are the same on every node."
        )
    return f"fabric run: {missing}"


if __name__ == "__main__":
    main()
