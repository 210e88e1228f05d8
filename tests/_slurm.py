"""A real one-machine SLURM cluster for the tests, started with scripts/cluster/start_slurm.sh.

The fixture `slurm_cluster` in tests/conftest.py (session scope) starts it in a temporary directory on
free loopback ports, points SLURM_CONF at it for the session (sbatch, squeue, scancel, scontrol and
`ftsweep submit` then talk to it), and stops it afterwards. Where SLURM cannot start (not installed, not
root) the tests skip, unless FTSWEEP_REQUIRE_SLURM=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _services import run_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "cluster" / "start_slurm.sh"
REQUIRE_ENV = "FTSWEEP_REQUIRE_SLURM"  # =1: a cluster that cannot start fails the tests instead of skipping
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "scancel")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be started on this machine; the message says why."""


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def _free_port_pair() -> int:
    """A port P with P and P + 1 free on 127.0.0.1 (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise SlurmUnavailable("found no two free neighbouring ports on 127.0.0.1")


def _run_script(*args: str, timeout: float = 120) -> str:
    return run_script(SCRIPT, *args, unavailable=SlurmUnavailable, timeout=timeout)


@dataclass
class SlurmCluster:
    """A running cluster: `conf` is its slurm.conf (SLURM_CONF), `partition` its one partition."""

    root: Path
    partition: str = "debug"

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def stop(self) -> None:
        try:
            _run_script("stop", str(self.root), timeout=180)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> SlurmCluster:
    """Start a throwaway cluster on free loopback ports, or raise SlurmUnavailable saying why."""
    missing = [b for b in BINARIES if not shutil.which(b) and not Path("/usr/sbin", b).exists()]
    if missing:
        raise SlurmUnavailable(f"not installed: {', '.join(missing)} "
                               "(apt-get install --no-install-recommends slurm-wlm munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("start_slurm.sh runs slurmd as root: run the tests as root")
    root = Path(tempfile.mkdtemp(prefix="ftsweep-slurm-"))
    try:
        for attempt in range(3):
            try:
                _run_script("start", str(root), "--port", str(_free_port_pair()))
                break
            except SlurmUnavailable as error:  # another process took the port meanwhile: the next pair
                if attempt == 2 or "does not answer" not in str(error):
                    raise
                subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, timeout=180,
                               check=False)
    except BaseException:
        if (root / "slurm.conf").exists():
            subprocess.run(["bash", str(SCRIPT), "stop", str(root)], capture_output=True, timeout=180, check=False)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return SlurmCluster(root=root)
