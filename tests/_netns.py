"""Two Ray hosts on one machine for the tests: two network namespaces joined by a bridge.

`start_cluster()` makes namespaces `fts-h-ID` (head) and `fts-w-ID` (worker), each with loopback and one veth
end on 10.213.0.0/24; the other veth ends hang on a bridge in the root namespace (which has no address there,
so runs beside each other never clash). A Ray head starts in the head namespace and a worker node in the
other joins it, both with token authentication on (Ray's own default for `ray start --head` once a token
exists) and fast node-death detection. Nothing listens outside the namespaces. The filesystem is shared, as
NFS would be, unless the worker is started with `hidden=`: a tmpfs over that folder in its own mount namespace.

Stopping kills every process in the two namespaces by pid (`ip netns pids`), then deletes the namespaces and
the bridge. Not `ray stop`: it kills Ray processes by name on the whole machine (PID namespaces are shared),
other tests' and other checkouts' Rays included.

The fixture `ray_netns` (tests/conftest.py) starts clusters and always stops them. Without `ip netns` (not
root, no iproute2) the tests skip, unless FTSWEEP_REQUIRE_NETNS=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "FTSWEEP_REQUIRE_NETNS"  # =1: namespaces that cannot be made fail the tests instead of skipping
SUBNET = "10.213.0"
PORT = 6379  # the head's GCS port, inside its own namespace
RAY = str(Path(sys.executable).parent / "ray")
# The GCS declares a node dead after 3 missed 1 s health checks (Ray's default: 5 of 5 s plus a 5 s delay).
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says why."""


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


@dataclass
class Host:
    """One network namespace: `address` is its one address, `veth` its link's end in the root namespace."""

    namespace: str
    address: str
    veth: str
    temp_dir: Path

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, check=False)
        return [int(p) for p in done.stdout.split()]

    def raylet_pid(self) -> int:
        """The pid of this host's raylet (its Ray node), picked among this namespace's processes only."""
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        raise LookupError(f"no raylet runs in {self.namespace}")

    def kill_all(self) -> None:
        deadline = time.monotonic() + 30
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


@dataclass
class RayNetCluster:
    """A running two-host Ray cluster; `address` is the head's GCS, `env` what a process needs to join it."""

    root: Path
    bridge: str
    head: Host
    worker: Host
    token_file: Path
    logs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.head.address}:{PORT}"

    @property
    def env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def nodes(self) -> dict[str, dict]:
        """node id -> {"ip", "alive"}, asked from inside the head namespace."""
        script = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                  "print(json.dumps({n['NodeID']: {'ip': n['NodeManagerAddress'], 'alive': n['Alive']} "
                  "for n in ray.nodes()}))" % self.address)
        done = subprocess.run(self.head.command(sys.executable, "-c", script), env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=120, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        try:
            for host in (self.worker, self.head):
                # A cut link back up first: sockets closed across it must finish closing, else the kernel keeps
                # the namespace (and its veth pair) alive after `ip netns delete` until they time out.
                subprocess.run(["ip", "link", "set", host.veth, "up"], capture_output=True, check=False)
            for host in (self.worker, self.head):
                host.kill_all()
            for host in (self.worker, self.head):
                subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True, check=False)
                subprocess.run(["ip", "link", "delete", host.veth], capture_output=True, check=False)
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _node_env(token_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, **HEALTH_CHECK, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _ray_start(host: Host, args: list[str], env: dict[str, str], log: Path, hidden: Path | None = None) -> None:
    argv = [RAY, "start", *args, f"--node-ip-address={host.address}", "--num-cpus=1",
            f"--temp-dir={host.temp_dir}", "--disable-usage-stats"]
    if hidden is not None:  # this node's own mount namespace, an empty tmpfs over `hidden`
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs ftsweep-hidden "$1" && shift && exec "$@"', "sh", str(hidden), *argv]
    with log.open("w") as out:
        done = subprocess.run(host.command(*argv), env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                              timeout=180, check=False)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ray start` in {host.namespace} failed (exit {done.returncode}): "
                               f"{log.read_text()[-1500:]}")


def start_cluster(*, hidden: Path | None = None) -> RayNetCluster:
    """Start the two hosts and their Ray (the worker node with `hidden` covered by its own empty tmpfs), or
    raise NetnsUnavailable saying why."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root: run the tests as root")
    if not shutil.which("ip"):
        raise NetnsUnavailable("`ip` is not installed (apt-get install iproute2)")
    run_id = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"fsn-{run_id}-"))  # short: Ray's socket paths live under it
    token_file = root / "token"
    token_file.write_text(secrets.token_hex(32))
    cluster = RayNetCluster(root=root, bridge=f"ftsbr{run_id}", token_file=token_file,
                            head=Host(f"fts-h-{run_id}", f"{SUBNET}.1", f"ftsh{run_id}", root / "h"),
                            worker=Host(f"fts-w-{run_id}", f"{SUBNET}.2", f"ftsw{run_id}", root / "w"))
    try:
        _ip("link", "add", cluster.bridge, "type", "bridge")
        _ip("link", "set", cluster.bridge, "up")
        for host in (cluster.head, cluster.worker):
            peer = f"{host.veth}p"
            _ip("netns", "add", host.namespace)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.namespace)
            _ip("link", "set", host.veth, "master", cluster.bridge)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
            _ip("-n", host.namespace, "link", "set", peer, "name", "eth0")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.namespace, "link", "set", "eth0", "up")
        env = _node_env(token_file)
        _ray_start(cluster.head, ["--head", f"--port={PORT}", "--include-dashboard=false"], env, root / "head.log")
        _ray_start(cluster.worker, [f"--address={cluster.address}"], env, root / "worker.log", hidden=hidden)
        deadline = time.monotonic() + 60
        while sum(n["alive"] for n in cluster.nodes().values()) < 2:
            if time.monotonic() > deadline:
                raise NetnsUnavailable(f"the worker node did not join: {(root / 'worker.log').read_text()[-1500:]}")
            time.sleep(1)
    except BaseException:
        cluster.stop()
        raise
    return cluster
