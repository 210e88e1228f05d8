"""A real PostgreSQL for the tests, started with scripts/cluster/start_postgres.sh.

The fixtures in tests/conftest.py use it: `postgres_server` (session), `postgres_url` (session, the
`optuna` database) and `postgres_db_url` (a fresh database per test). The password is a sentinel so
tests can prove it never leaks into output, files or the study store.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _services import run_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "cluster" / "start_postgres.sh"
PASSWORD_SENTINEL = "pw-SENTINEL-7f3a9c"
REQUIRE_ENV = "FTSWEEP_REQUIRE_POSTGRES"  # =1: a server that cannot start fails the tests instead of skipping


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started on this machine; the message says why."""


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_script(*args: str) -> str:
    env = {**os.environ, "FTSWEEP_DB_PASSWORD": PASSWORD_SENTINEL}  # in the environment, not on a command line
    return run_script(SCRIPT, *args, unavailable=PostgresUnavailable, env=env)


@dataclass
class PostgresServer:
    """A running server: `url` is the `optuna` database as role ftsweep, `database_url(name)` another one."""

    datadir: Path
    port: int
    created: set[str] = field(default_factory=set)

    def database_url(self, name: str = "optuna") -> str:
        return f"postgresql+psycopg2://ftsweep:{PASSWORD_SENTINEL}@127.0.0.1:{self.port}/{name}"

    @property
    def url(self) -> str:
        return self.database_url()

    def create_database(self, hint: str) -> str:
        """A new empty database owned by ftsweep, named after `hint` (a test name); returns its URL."""
        base = re.sub(r"[^a-z0-9_]+", "_", hint.lower()).strip("_")[:50] or "db"
        name, n = f"t_{base}", 1
        while name in self.created:
            n += 1
            name = f"t_{base}_{n}"
        _run_script("createdb", str(self.datadir), name)
        self.created.add(name)
        return self.database_url(name)

    def stop(self) -> None:
        try:
            _run_script("stop", str(self.datadir))
        finally:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_server() -> PostgresServer:
    """Start a throwaway server on a free loopback port, or raise PostgresUnavailable saying why."""
    try:
        import psycopg2  # noqa: F401
    except ImportError as error:
        raise PostgresUnavailable(f"the PostgreSQL driver is missing ({error}): pip install -e '.[postgres]'")
    if not os.environ.get("PG_BINDIR") and not glob.glob("/usr/lib/postgresql/*/bin/initdb") \
            and not shutil.which("initdb"):
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb) on this machine: "
                                  "apt-get install postgresql")
    if shutil.which("bash") is None:
        raise PostgresUnavailable("bash is needed to run scripts/cluster/start_postgres.sh")
    # A short path of our own in the system temp dir (world-traversable, so the `postgres` user can
    # reach it when the tests run as root; the unix socket path inside it must stay under 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="ftsweep-pg-"))
    datadir = root / "data"
    if os.geteuid() == 0:
        root.chmod(0o711)
    try:
        for attempt in range(3):
            port = free_port()
            try:
                _run_script("start", str(datadir), "--port", str(port), "--listen", "127.0.0.1")
                break
            except PostgresUnavailable as error:  # another process took the free port meanwhile: next one
                if attempt == 2 or "already in use" not in str(error):
                    raise
    except BaseException:
        if (datadir / "postmaster.pid").exists():
            subprocess.run(["bash", str(SCRIPT), "stop", str(datadir)], capture_output=True, timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return PostgresServer(datadir=datadir, port=port)
