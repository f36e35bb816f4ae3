"""A real SLURM cluster of two nodes on this machine: munge, ``slurmctld`` and two ``slurmd``.

Debian's ``slurm-wlm`` is built with multiple-slurmd support, so ``slurmd -N NAME`` runs one daemon per
node name side by side on one host. Every file (configuration, munge key and socket, state, logs) lives
in a directory of the caller's; the ports are free ones found at start; the clients (``sbatch``,
``srun``, ``scontrol``) find the cluster through ``SLURM_CONF``. Node names are added to ``/etc/hosts``
(pointing at 127.0.0.1) because SLURM hands them to the job in ``SLURM_NODELIST``, and removed at stop.
Several clusters may run side by side (one per pytest-xdist worker): each has node names of its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NODES = ("fabric-n1", "fabric-n2")  # the names of the first cluster; others get a tag in between
NODE_CPUS = 4  # more than this machine's cores: `SlurmdParameters=config_overrides` lets tasks share them
_HOSTS = Path("/etc/hosts")
_HOSTS_MARK = "# fabric cluster tests"
REQUIRED = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel")


def missing_programs() -> list[str]:
    return [name for name in REQUIRED if shutil.which(name) is None]


def _die_with_parent() -> None:
    """In the daemon, before exec: SIGTERM when the test process dies, even when it is killed outright
    (PR_SET_PDEATHSIG; Linux), so no daemon outlives an interrupted test run."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SlurmCluster:
    """Start with :meth:`start`, always end with :meth:`stop` (it stops whatever was started)."""

    def __init__(self, root: Path, tag: str = "") -> None:
        """``tag`` tells clusters running at the same time apart: nodes ``fabric-{tag}-n1``, ``-n2``."""
        self.root = root
        self.nodes = tuple(f"fabric-{tag}-{name[len('fabric-') :]}" for name in NODES) if tag else NODES
        self._mark = f"{_HOSTS_MARK} {root}"
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self._daemons: list[subprocess.Popen] = []
        self._hosts_added = False

    @property
    def env(self) -> dict[str, str]:
        """What a client needs to reach this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = 60.0) -> None:
        self._add_hosts()
        self._start_munge()
        self._write_config()
        env = self.env
        logs = self.root / "logs"
        self._spawn(["slurmctld", "-D", "-c"], env, logs / "slurmctld.out")
        for node in self.nodes:
            self._spawn(["slurmd", "-D", "-N", node], env, logs / f"slurmd-{node}.out")
        self._wait_until_idle(timeout)

    def stop(self) -> None:
        """Stop every daemon this object started (SIGTERM, then SIGKILL), cancel jobs, restore /etc/hosts."""
        if self._daemons and shutil.which("scancel"):
            subprocess.run(
                ["scancel", "--full", "--user=root"], env=self.env, capture_output=True, timeout=20
            )
        for process in reversed(self._daemons):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 15
        for process in self._daemons:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._daemons.clear()
        self._remove_hosts()

    def logs(self) -> str:
        """The daemons' logs, for a failing test's message."""
        parts = []
        for path in sorted((self.root / "logs").glob("*")):
            parts.append(
                f"==> {path.name} <==\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:])
            )
        return "\n".join(parts)

    # -------------------------------------------------------------------------------------------------
    def _spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                args,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._daemons.append(process)
        return process

    def _add_hosts(self) -> None:
        with _hosts_lock():
            text = _HOSTS.read_text()
            lines = [f"127.0.0.1 {node} {self._mark}" for node in self.nodes if f" {node} " not in text]
            if lines:
                _HOSTS.write_text(text + ("" if text.endswith("\n") else "\n") + "\n".join(lines) + "\n")
                self._hosts_added = True

    def _remove_hosts(self) -> None:
        if not self._hosts_added:
            return
        with _hosts_lock():
            kept = [line for line in _HOSTS.read_text().splitlines() if not line.endswith(self._mark)]
            _HOSTS.write_text("\n".join(kept) + "\n")
        self._hosts_added = False

    def _start_munge(self) -> None:
        directory = self.munge_socket.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = directory / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(
            [
                "munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={directory / 'munged.pid'}", f"--log-file={directory / 'munged.log'}",
                f"--seed-file={directory / 'munged.seed'}",
            ],
            dict(os.environ),
            self.root / "logs" / "munged.out",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not create {self.munge_socket}:\n{self.logs()}")
            time.sleep(0.1)

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        state = self.root / "state"
        spool = self.root / "spool"
        state.mkdir(exist_ok=True)
        spool.mkdir(exist_ok=True)
        logs = self.root / "logs"
        nodes = "\n".join(
            f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={NODE_CPUS}"
            f" RealMemory=2000 State=UNKNOWN"
            for node in self.nodes
        )
        self.conf.write_text(
            f"""ClusterName=fabrictest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it starts again (SLURM's default: 120 s)
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={state}
SlurmdSpoolDir={spool}/%n
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd-%n.pid
SlurmctldLogFile={logs}/slurmctld.log
SlurmdLogFile={logs}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
{nodes}
PartitionName=debug Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _wait_until_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            for process in self._daemons:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{self.logs()}")
            run = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True, timeout=20
            )
            states = run.stdout + run.stderr
            if run.returncode == 0 and states.split().count("idle") == len(self.nodes):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM nodes did not become idle in {timeout} s ({states!r}):\n{self.logs()}")


class _hosts_lock:
    """Clusters of several test processes edit /etc/hosts one at a time (read, then write)."""

    def __enter__(self) -> None:
        self._file = open("/tmp/fabric-cluster-hosts.lock", "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def stop_all(clusters: list[SlurmCluster]) -> None:
    for cluster in clusters:
        cluster.stop()


if __name__ == "__main__":  # start a cluster by hand: python -m tests.cluster.services DIR
    import sys

    cluster = SlurmCluster(Path(sys.argv[1]))
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}")
    try:
        signal.pause()
    finally:
        cluster.stop()
