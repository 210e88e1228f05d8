"""Where studies live: storage URLs opened as Optuna storages (journal files, SQLite, PostgreSQL/MySQL).

`journal:///FILE` is Optuna's journal file storage, the default (`default_storage_url`): cheap per trial
and open to several local workers. Databases heartbeat running trials, and so does the journal file
through `HeartbeatJournalStorage`, so a trial whose worker went silent is failed and retried.
`postgresql://` and `mysql://` URLs get the driver that is installed (`with_driver`).
What a trial holds is `search/store/record.py`.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the interface Optuna's own RDBStorage implements
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from spaces import ConfigError

from ..secrets import redact_url

# FTSWEEP_HOST names this machine where hostnames are not unique (containers that all call themselves
# "localhost"): a worker on another host is never judged dead by its process id.
HOST = os.environ.get("FTSWEEP_HOST") or socket.gethostname()
WORKER_ID = f"{HOST}:{os.getpid()}"  # this process, as trial records name their owner


JOURNAL = "journal:///"  # Optuna's journal file storage: journal:///relative/file.log, journal:////abs/file.log


def open_storage(url: str, *, heartbeat=None, on_stale=None):
    """What `optuna.create_study/load_study(storage=...)` takes for a storage URL: the URL itself for
    databases, with the installed driver named where the URL names none (`with_driver`), a
    `JournalStorage` for `journal:///FILE` (several processes on one node or a shared filesystem,
    without a database server).

    With `heartbeat` (a RetryPolicy), storages shared by several processes heartbeat running trials:
    `study.optimize` then fails a trial silent for `grace_period` and passes it to `on_stale(study,
    trial)`. PostgreSQL/MySQL use Optuna's RDB heartbeat; the journal file uses the same mechanism
    through `HeartbeatJournalStorage`; SQLite (one worker) needs none.

    Example:
        >>> type(open_storage(f"journal:///{tmp}/demo.journal")).__name__
        'JournalStorage'
    """
    if url.startswith(JOURNAL):
        backend = JournalFileBackend(url.removeprefix(JOURNAL))
        if heartbeat is None:
            return JournalStorage(backend)
        return HeartbeatJournalStorage(backend, heartbeat_interval=heartbeat.heartbeat_interval,
                                       grace_period=heartbeat.grace_period, stale_trial_callback=on_stale)
    url = with_driver(url)
    if heartbeat is None or url.startswith("sqlite"):
        return url
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=heartbeat.heartbeat_interval, grace_period=heartbeat.grace_period,
                          heartbeat_stale_trial_callback=on_stale)


# The database servers by the scheme users write: the database's name, the driver SQLAlchemy itself picks for a
# bare scheme, and the drivers ftsweep picks from instead, in order: (URL driver name, DB-API module, what installs it).
_POSTGRES = ("PostgreSQL", "psycopg", (("psycopg", "psycopg", "pip install 'psycopg[binary]'"),
                                       ("psycopg2", "psycopg2", "pip install 'ftsweep[postgres]'")))
_MYSQL = ("MySQL", "mysqldb", (("mysqldb", "MySQLdb", "pip install mysqlclient"),
                               ("pymysql", "pymysql", "pip install 'ftsweep[mysql]'")))
SERVERS = {"postgresql": _POSTGRES, "mysql": _MYSQL, "mariadb": _MYSQL}
SCHEME_ALIASES = {"postgres": "postgresql"}  # Heroku's and libpq's spelling, which SQLAlchemy refuses


def with_driver(url: str, importable=None) -> str:
    """`url` with an installed driver named: `postgresql://` (or `postgres://`) gets psycopg 3, else psycopg2
    (`ftsweep[postgres]`); `mysql://`/`mariadb://` MySQLdb, else PyMySQL (`ftsweep[mysql]`). A named driver
    is kept; other URLs are returned as given. `importable`: the module names that import (default: try).
    No driver is a ConfigError, password hidden, saying what to install.

    Example:
        >>> with_driver("postgresql://sweeper:pw@db/optuna", importable={"psycopg2"})
        'postgresql+psycopg2://sweeper:pw@db/optuna'
        >>> with_driver("postgres://sweeper:pw@db/optuna", importable={"psycopg", "psycopg2"})
        'postgresql+psycopg://sweeper:pw@db/optuna'
        >>> with_driver("mysql+mysqlconnector://sweeper:pw@db/optuna", importable=())
        'mysql+mysqlconnector://sweeper:pw@db/optuna'
    """
    scheme, sep, rest = url.partition("://")
    backend, _, driver = scheme.partition("+")
    backend = SCHEME_ALIASES.get(backend.lower(), backend.lower())
    if not sep or backend not in SERVERS:
        return url
    database, default, drivers = SERVERS[backend]
    imports = _imports if importable is None else set(importable).__contains__
    if driver:  # named by the user: kept, with a clear error if it is one we know and it is missing
        known = [(module, install) for name, module, install in drivers if name == driver.lower()]
        if known and not imports(known[0][0]):
            raise ConfigError(f"the {driver} driver this {scheme}:// URL names is not installed",
                              key="storage", value=redact_url(url),
                              hint=f"Fix: {known[0][1]}, or leave the driver out ({backend}://...) to use "
                                   "an installed one.")
        return url if scheme == f"{backend}+{driver}" else f"{backend}+{driver}://{rest}"
    for name, module, _ in drivers:
        if imports(module):
            return f"{backend}+{name}://{rest}"
    names = " or ".join(module for _, module, _ in drivers)
    raise ConfigError(f"no {database} driver is installed for this {scheme}:// URL (SQLAlchemy's own choice "
                      f"for {backend}:// is {default}; ftsweep takes {names})", key="storage", value=redact_url(url),
                      hint=f"Fix: {drivers[-1][2]}.")


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:  # not installed, or installed without what it needs (psycopg without libpq)
        return False
    return True


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage with the heartbeat Optuna gives its RDB storage: `study.optimize`
    refreshes each running trial's `heartbeat` system attr every `heartbeat_interval` s, and
    `optuna.storages.fail_stale_trials` fails those older than `grace_period` (wall-clock time of the
    writing nodes: keep the grace period well above their clock skew).

    Example:
        >>> from optuna.storages.journal import JournalFileBackend
        >>> storage = HeartbeatJournalStorage(JournalFileBackend(f"{tmp}/s.log"), heartbeat_interval=10,
        ...                                   grace_period=60)
        >>> storage.get_heartbeat_interval()
        10
    """

    def __init__(self, backend, *, heartbeat_interval: int, grace_period: int, stale_trial_callback=None) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, "heartbeat", time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker judged it stale meanwhile; the trial's own next write fails too

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        deadline = time.time() - self._grace_period
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if t.system_attrs.get("heartbeat", deadline) < deadline]

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._stale_trial_callback


def prepare_storage(url: str):
    """Create the directory of a SQLite or journal file, then open the storage (see `open_storage`)."""
    file = study_file_of(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    return open_storage(url)


def study_file_of(url: str) -> Path | None:
    """The file a `journal:///` or `sqlite:///` storage URL keeps its studies in (None for a server)."""
    return next((Path(url.removeprefix(p)) for p in STUDY_FILES.values() if url.startswith(p)), None)


def load_existing_study(study_name: str, storage: str) -> optuna.Study:
    """Open a study for reading; a clear error listing the studies there when the name is wrong."""
    opened = open_storage(storage)  # once: a journal file is replayed on opening
    names = optuna.study.get_all_study_names(storage=opened)
    if study_name not in names:
        raise ConfigError("no such study in this storage", key="study", value=study_name,
                          allowed=names or "(the storage holds no study)")
    return optuna.load_study(study_name=study_name, storage=opened)


def default_storage_url(directory: Path, study_name: str) -> str:
    """The storage of a sweep that names none: Optuna's journal file `<directory>/<study>.journal`.

    A journal file costs ~6 ms of storage work per trial where SQLite costs ~50 (docs/benchmarks.md), and
    several worker processes on one node or a shared filesystem may write it, so `--workers N` works
    without a database server. A `<study>.db` SQLite file that an earlier ftsweep wrote there is kept,
    so its study resumes.

    Example:
        >>> default_storage_url(Path("/work/runs/demo"), "demo")
        'journal:////work/runs/demo/demo.journal'
    """
    legacy = directory / f"{study_name}.db"
    if legacy.exists():
        return f"sqlite:///{legacy}"
    return f"{JOURNAL}{directory / f'{study_name}.journal'}"


# A study file's suffix says which storage reads it.
STUDY_FILES = {".journal": JOURNAL, ".db": "sqlite:///"}


