"""Where studies live: storage URLs opened as Optuna storages (journal files, SQLite, PostgreSQL/MySQL).

`journal:///FILE` is Optuna's journal file storage, the default (`default_storage_url`): cheap per trial
and open to several local workers. Databases heartbeat running trials, and so does the journal file
through `HeartbeatJournalStorage`, so a trial whose worker went silent is failed and retried.
What a trial holds is `search/store/record.py`.
"""

from __future__ import annotations

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

# FTSWEEP_HOST names this machine where hostnames are not unique (containers that all call themselves
# "localhost"): a worker on another host is never judged dead by its process id.
HOST = os.environ.get("FTSWEEP_HOST") or socket.gethostname()
WORKER_ID = f"{HOST}:{os.getpid()}"  # this process, as trial records name their owner


JOURNAL = "journal:///"  # Optuna's journal file storage: journal:///relative/file.log, journal:////abs/file.log


def open_storage(url: str, *, heartbeat=None, on_stale=None):
    """What `optuna.create_study/load_study(storage=...)` takes for a storage URL: the URL itself for
    databases, a `JournalStorage` for `journal:///FILE` (several processes on one node or a shared
    filesystem, without a database server).

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
    if heartbeat is None or url.startswith("sqlite"):
        return url
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=heartbeat.heartbeat_interval, grace_period=heartbeat.grace_period,
                          heartbeat_stale_trial_callback=on_stale)


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


