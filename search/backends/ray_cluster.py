"""Joining a Ray cluster: the token it may ask for, and the results folder every node must share.

- Token authentication: from Ray 2.59 a cluster started by `ray start --head` on a machine that holds a
  token (~/.ray/auth_token, written by any local Ray run) asks every client for it. A client sends its
  token only with RAY_AUTH_MODE=token, which `ray.init(address=...)` never turns on by itself; without
  it the join retries for 20 s and says only "Failed to connect to Ray cluster". `join_ray` turns it on
  when the user has a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as Ray looks),
  which a cluster without authentication ignores, and names the fix when the cluster refuses the token.
- Shared results: checkpoints are written under `<output_dir>/ray` by the node a trial runs on and read
  by the driver, so every node must see that folder at the same path. `check_shared_results` checks it
  when the launch joins, not when the first trial on another node checkpoints.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from pathlib import Path

from spaces import ConfigError

AUTH_MODE = "RAY_AUTH_MODE"  # Ray's: "token" makes a client send its token
TOKEN_ENV = "RAY_AUTH_TOKEN"  # Ray's: the token itself
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"  # Ray's: a file holding the token (else ~/.ray/auth_token)
TOKEN_FIX = (f"Fix: give this launch the cluster's token (on the head node: `ray get-auth-token`) in "
             f"{TOKEN_ENV}, or in a file named by {TOKEN_PATH_ENV}, or in ~/.ray/auth_token.")
MARKER_PREFIX = ".ftsweep-shared-"


def join_ray(ray, ray_options) -> None:
    """Start a local Ray, or join the cluster at `ray.address` / $RAY_ADDRESS, unless this process has one.
    Joining sends the user's Ray token when there is one; a cluster that refuses it is a ConfigError."""
    if ray.is_initialized():
        return
    _drop_raylet_log_tails()
    address = ray_options.address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto" and not address.startswith("ray://"):
        # "auto" (a Ray on this machine) turns token auth on by itself; a Ray Client address has its own.
        _send_token_if_any()
        _check_token(address)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             **({} if address else {"num_cpus": ray_options.num_cpus, "num_gpus": ray_options.num_gpus}))


LOG_TAIL = re.compile(r"\s*Last \d+ lines of the Raylet logs:\n.*", re.DOTALL)


def _drop_raylet_log_tails() -> None:
    """Keep Ray's one-line reason when a node's raylet dies, without the last 20 lines of its log that Ray's
    driver prints after it (`[state-dump]` tables: ~40 lines in the middle of the sweep's progress).

    Ray prints every error the cluster publishes from a driver thread (`listen_error_messages` in
    ray/_private/worker.py) whatever `log_to_driver` says, and Ray 2.60 has no setting for it, so the
    printing function is wrapped; without it (another Ray version) nothing changes."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "ftsweep", False):
        return

    def print_to_stdstream(data, ignore_prefix):
        if data.get("pid") == "raylet":
            lines = [LOG_TAIL.sub(" (its log: raylet.out in that node's Ray session folder)", line)
                     for line in data.get("lines", [])]
            data = {**data, "lines": [line for line in lines if not line.lstrip().startswith("[state-dump]")]}
        return original(data, ignore_prefix)

    print_to_stdstream.ftsweep = True
    worker.print_to_stdstream = print_to_stdstream


def _send_token_if_any() -> None:
    """RAY_AUTH_MODE=token for this process when it is unset and the user has a token, as Ray's own
    `ray.init()` does for a cluster it finds on this machine (authentication_token_setup.py)."""
    if os.environ.get(AUTH_MODE) is not None:  # the user chose
        return
    try:  # Ray's own token loader (2.59+): the same places, in the same order, as Ray looks
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication: nothing to send
        return
    loader = AuthenticationTokenLoader.instance()
    if loader.has_token(ignore_auth_mode=True):
        os.environ[AUTH_MODE] = "token"
        Config.initialize("")  # Ray caches its config at import: read the mode again


def _check_token(address: str) -> None:
    """ConfigError when the cluster at `address` refuses this process's token (or its lack of one).
    A quick GCS handshake: the refusal comes at once, where `ray.init` would retry for 20 s and then
    report a bare ConnectionError. Not answering at all is left to `ray.init` to report."""
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication: ray.init reports what goes wrong
        return

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError):
        return
    try:
        GcsClient(address=address)
    except AuthenticationError:
        sent = os.environ.get(AUTH_MODE) == "token"
        raise ConfigError(
            f"the Ray cluster at {address} uses token authentication and "
            + ("refused this launch's token (" + _token_source() + ")" if sent else "this launch has no Ray token"),
            key="ray.address", value=address, hint=TOKEN_FIX) from None
    except Exception:  # anything else: ray.init says it, as before
        return


def _token_source() -> str:
    if os.environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    if os.environ.get(TOKEN_PATH_ENV):
        return f"${TOKEN_PATH_ENV}={os.environ[TOKEN_PATH_ENV]}"
    return str(Path.home() / ".ray" / "auth_token")


def check_shared_results(ray, results_dir: Path, *, source: str | None = None) -> None:
    """ConfigError unless every other alive node of the joined cluster sees `results_dir` (where Ray
    writes trial checkpoints) at the same path: a marker file written here is looked for there by a
    task pinned to each node. A one-node cluster has nothing to check."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not others:
        return
    results_dir = Path(results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    marker = results_dir / f"{MARKER_PREFIX}{uuid.uuid4().hex}"
    marker.write_text("written by the ftsweep driver; looked for by every Ray node\n")
    try:
        sees = ray.remote(num_cpus=0)(_sees)  # no CPU: runs even while trials fill the node
        found = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                         .remote(str(marker)) for n in others], timeout=120)
    finally:
        marker.unlink(missing_ok=True)
    blind = [f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})" for n, ok in zip(others, found) if not ok]
    if blind:
        raise ConfigError(
            f"Ray node(s) {', '.join(blind)} do not see the results folder {results_dir} that this driver writes "
            "(Ray writes every trial's checkpoints there, on the node the trial runs on)",
            source=source, key="output_dir",
            hint="Fix: set output_dir to a folder every node mounts at the same path (a shared filesystem: "
                 "NFS, Lustre, ...).")


def _sees(path: str) -> bool:
    return os.path.exists(path)
