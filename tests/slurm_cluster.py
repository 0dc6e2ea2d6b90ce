"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd from the Debian
packages ``slurm-wlm`` and ``munge``, configured in a temporary directory, listening on
127.0.0.1 only, and stopped by their process ids.

    cluster = LocalSlurm(tmp_dir).start()   # raises SlurmUnavailable with the reason
    subprocess.run(["sinfo"], env=cluster.env)
    cluster.stop()

Commands (sbatch, squeue, scancel, and submitit's calls to them) find the cluster through the
``SLURM_CONF`` variable of ``cluster.env``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
# the node is this machine, under its own name: DDP ranks reach rank 0 at the node's name
NODE = socket.gethostname().split(".")[0]
PARTITION = "debug"


class SlurmUnavailable(RuntimeError):
    """SLURM is not installed here, or its daemons did not start (the message says why)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read the memory size from /proc/meminfo")


def missing_programs() -> list[str]:
    return [name for name in (*DAEMONS, "sinfo", "sbatch", "squeue", "scancel") if shutil.which(name) is None]


class LocalSlurm:
    """One node (this machine: its name, CPUs and memory) in one partition (``debug``)."""

    def __init__(self, root: str | os.PathLike, cpus: int | None = None, start_timeout_s: float = 60.0) -> None:
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = _memory_mb() - 512  # leave the daemons some room
        self.start_timeout_s = start_timeout_s
        self.processes: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- configuration --------------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        host = socket.gethostname().split(".")[0]
        r = self.root
        lines = [
            "ClusterName=kantest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job may start again this many seconds later (default 120)
            f"AuthInfo=socket={r}/munge/munge.socket,cred_expire=10",
            # no cgroups: plain process tracking, no task binding
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ReturnToService=2",
            "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
            "SlurmdParameters=config_overrides",
            # short cycles: tests wait for these
            "SchedulerParameters=sched_interval=2",
            "KillWait=15",
            "MinJobAge=600",
            "InactiveLimit=0",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/slurmctld.log",
            f"SlurmdLogFile={r}/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.root / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")

    # -- life cycle -----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")
        self.processes[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
        )
        log.close()

    def _logs(self) -> str:
        parts = []
        for name in ("munged.out", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log", "munged.log"):
            path = self.root / name
            if path.is_file():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-1500:])
        return "\n".join(parts)

    def start(self) -> "LocalSlurm":
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(f"SLURM is not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge")
        self._write_config()
        m = self.root / "munge"
        try:
            self._spawn("munged", [
                "munged", "--foreground", "--force", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
                f"--pid-file={m}/munged.pid", f"--log-file={self.root}/munged.log", f"--seed-file={m}/munged.seed",
            ])
            self._wait_for(lambda: (m / "munge.socket").exists(), "munged's socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait_for(lambda: self._run("sinfo", "-h").returncode == 0, "slurmctld to answer")
            self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
            self._wait_for(lambda: self.node_state() == "idle", "the node to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with {proc.returncode} while waiting for {what}\n{self._logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"timed out after {self.start_timeout_s:.0f} s waiting for {what}\n{self._logs()}")

    def node_state(self) -> str:
        out = self._run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T")
        return out.stdout.strip().rstrip("*~#$@+") if out.returncode == 0 else ""

    def jobs(self) -> dict[str, str]:
        """Every job slurmctld still knows: ``{job id: state}`` (array tasks as ``<id>_<task>``)."""
        out = self._run("squeue", "-h", "-r", "--states=all", "-o", "%i %T")
        return dict(line.split() for line in out.stdout.splitlines() if line.strip())

    def stop(self) -> None:
        """Cancel every job, then end slurmd, slurmctld and munged by their pids."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            try:
                self._run("scancel", "--full", "--user", str(os.getuid()))
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and any(s in ("RUNNING", "COMPLETING") for s in self.jobs().values()):
                    time.sleep(1)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for name in reversed(DAEMONS):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
