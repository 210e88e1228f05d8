"""The study store: the single source of truth every command reads, whichever backend wrote it.

What ftsweep keeps on each Optuna trial (so `best`, `show`, `export` need nothing else):
    params                      searched values (Optuna's own record)
    intermediate_values         the sweep metric at each evaluation step
    user_attrs["config"]        the full resolved params: searched, fixed and derived
    user_attrs["metrics"]       final metrics of a completed trial
    user_attrs["eval_history"]  every evaluation: step + all metrics
    user_attrs["fail_reason"]   why a FAIL trial failed ("TrialDiverged: ...", "interrupted: ...")
    user_attrs["worker"]        host:pid that ran it, to tell a dead worker's trial from a live one
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import optuna
from optuna.trial import TrialState

from spaces import ConfigError

WORKER = f"{socket.gethostname()}:{os.getpid()}"


def redact_url(url: str) -> str:
    """A storage URL with its password replaced by ***, safe to print or store.

    Example:
        >>> redact_url("postgresql://sweeper:s3cret@db:5432/optuna")
        'postgresql://sweeper:***@db:5432/optuna'
    """
    from sqlalchemy.engine import make_url

    try:
        # The pattern runs too: an unescaped '@' in a password fools the URL parser into a host.
        return scrub_secrets(make_url(url).render_as_string(hide_password=True))
    except Exception:  # not something SQLAlchemy parses (bad port, unescaped '@'...): hide by pattern
        return scrub_secrets(url)


_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^\s]+@", re.I)


def scrub_secrets(text: str) -> str:
    """Hide the password of any URL in a message (libraries sometimes echo connection strings).

    Example:
        >>> scrub_secrets("could not connect to postgresql://u:p@ss@db:bad/x")
        'could not connect to postgresql://u:***@db:bad/x'
    """
    return _URL_PASSWORD.sub(r"\1***@", text)


JOURNAL = "journal:///"  # Optuna's journal file storage: journal:///relative/file.log, journal:////abs/file.log


def open_storage(url: str):
    """What `optuna.create_study/load_study(storage=...)` takes for a storage URL: the URL itself for
    databases, a `JournalStorage` for `journal:///FILE` (several processes on one node or a shared
    filesystem, without a database server).

    Example:
        >>> type(open_storage("journal:///runs/demo/demo.log")).__name__  # doctest: +SKIP
        'JournalStorage'
    """
    if url.startswith(JOURNAL):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
    return url


def prepare_storage(url: str):
    """Create the directory of a SQLite or journal file, then open the storage (see `open_storage`)."""
    for prefix in ("sqlite:///", JOURNAL):
        if url.startswith(prefix):
            Path(url.removeprefix(prefix)).parent.mkdir(parents=True, exist_ok=True)
    return open_storage(url)


def record_sweep(study: optuna.Study, sweep) -> None:
    """Store the sweep on its study once, so every command can rebuild the objective from the store.
    Provenance without secrets: the storage URL is not stored at all (it may hold a password)."""
    if study.user_attrs.get("sweep"):
        return
    study.set_user_attr("sweep", sweep.spec.model_dump(mode="json", exclude={"storage"}))
    study.set_user_attr("space", sweep.space.to_dict())
    study.set_user_attr("metric", sweep.spec.metric.name)
    study.set_user_attr("objective", sweep.spec.objective.name)
    study.set_user_attr("backend", sweep.spec.backend)


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials count toward n_trials; a trial cut short by an interruption does not (it is re-run)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted", False)


def _worker_is_gone(worker: str | None) -> bool:
    if not worker:
        return False  # unknown origin: leave it (a heartbeat-enabled storage will time it out)
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker: we cannot tell from here
    if int(pid) == os.getpid():
        return True  # this process is launching, so it is not running that trial
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# Every backend stamps `worker` on a trial right after creating it (and sampling its params). A RUNNING
# trial still unstamped this long after its start belongs to a process killed in between.
UNSTAMPED_GRACE_S = 5.0


def _orphans_unstamped(study: optuna.Study, trials: list) -> set[int]:
    """Numbers of RUNNING trials without a `worker` stamp whose creator died before stamping them.
    Waits (at most UNSTAMPED_GRACE_S) for young ones, which a live process may be stamping right now."""
    unstamped = [t for t in trials if t.state == TrialState.RUNNING and "worker" not in t.user_attrs]
    if not unstamped:
        return set()
    import datetime
    import time

    youngest = max((t.datetime_start for t in unstamped if t.datetime_start), default=None)
    if youngest is not None:
        age = (datetime.datetime.now() - youngest).total_seconds()
        if age < UNSTAMPED_GRACE_S:
            time.sleep(UNSTAMPED_GRACE_S - age)
    orphans = set()
    for t in unstamped:
        now = study._storage.get_trial(t._trial_id)
        if now.state == TrialState.RUNNING and "worker" not in now.user_attrs:
            orphans.add(t.number)
    return orphans


def mark_interrupted(storage, trial_id: int, reason: str) -> None:
    """FAIL a trial that was cut short (not its own fault): it does not count toward n_trials and
    `recover_interrupted` queues its params again."""
    storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    storage.set_trial_user_attr(trial_id, "interrupted", True)
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING by a dead process as FAIL, and queue every interrupted trial's
    params again (once), so a resumed sweep re-runs exactly what was cut short. Returns their numbers."""
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    orphans = _orphans_unstamped(study, trials)
    # A finished trial cannot be updated, so "already queued again" is read off the retries themselves.
    retried = {t.user_attrs.get("retry_of") for t in trials}
    requeued = []
    for trial in trials:
        interrupted = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted", False)
        if trial.state == TrialState.RUNNING and (
                trial.number in orphans or _worker_is_gone(trial.user_attrs.get("worker"))):
            mark_interrupted(storage, trial._trial_id, "interrupted: the worker process ended mid-trial")
            interrupted = True
        if interrupted and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            requeued.append(trial.number)
    return requeued


def load_existing_study(study_name: str, storage: str) -> optuna.Study:
    """Open a study for reading; a clear error listing the studies there when the name is wrong."""
    opened = open_storage(storage)  # once: a journal file is replayed on opening
    names = optuna.study.get_all_study_names(storage=opened)
    if study_name not in names:
        raise ConfigError("no such study in this storage", key="study", value=study_name,
                          allowed=names or "(the storage holds no study)")
    return optuna.load_study(study_name=study_name, storage=opened)


def resolve_study(ref: str, storage: str | None = None) -> optuna.Study:
    """Open the study a CLI argument names. `ref` may be:

    - a study name with `--storage URL` (or `FTSWEEP_STORAGE` in the environment);
    - a sweep file: its storage and study name;
    - a `.db` SQLite file holding one study (or `FILE.db:STUDY` for one of several);
    - a study name whose default database exists: `runs/<name>/<name>.db`.

    Example:
        >>> study = resolve_study("demo")  # doctest: +SKIP  (after `ftsweep launch demo`)
    """
    storage = storage or os.environ.get("FTSWEEP_STORAGE")
    if storage:
        _check_study_name(ref)
        return load_existing_study(ref, storage)
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        from .spec import load_sweep

        sweep = load_sweep(ref)
        database = sweep.storage_url
        if database.startswith("sqlite:///") and not Path(database.removeprefix("sqlite:///")).exists():
            raise ConfigError("this sweep has not been launched yet (no study database)", key="study", value=ref,
                              hint=f"Fix: ftsweep launch {ref}")
        return load_existing_study(sweep.study_name, sweep.storage_url)
    db_path, _, name = str(path).partition(".db:")
    if name or path.suffix == ".db":
        db = Path(db_path + ".db" if name else path)
        if not db.exists():
            raise ConfigError("no such study database", key="study", value=str(db))
        url = f"sqlite:///{db.resolve()}"
        names = optuna.study.get_all_study_names(storage=url)
        if not name:
            if len(names) != 1:
                raise ConfigError("the database holds several studies: name one as FILE.db:STUDY", key="study",
                                  value=ref, allowed=names)
            name = names[0]
        return load_existing_study(name, url)
    _check_study_name(ref)
    default = Path("runs") / ref / f"{ref}.db"
    if default.exists():
        return load_existing_study(ref, f"sqlite:///{default.resolve()}")
    known = sorted(p.parent.name for p in Path("runs").glob("*/*.db")) if Path("runs").exists() else []
    raise ConfigError(
        "no such study", key="study", value=ref, allowed=known or "(no study under ./runs)",
        hint="Fix: pass the sweep file, the .db file, or --storage URL with the study name.",
    )


def _check_study_name(name: str) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError("a study name cannot contain path separators", key="study", value=name)



def resolve_storage(ref: str) -> str:
    """A storage URL from a URL, a .db file, a sweep file or a study name (for `ftsweep dashboard`)."""
    if "://" in ref:
        return ref
    path = Path(ref).expanduser()
    if path.suffix == ".db":
        if not path.exists():
            raise ConfigError("no such study database", key="storage", value=ref)
        return f"sqlite:///{path.resolve()}"
    resolve_study(ref)  # a clear error when there is no such study
    return _storage_url_of(ref)


def _storage_url_of(ref: str) -> str:
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        from .spec import load_sweep

        return load_sweep(ref).storage_url
    return f"sqlite:///{(Path('runs') / ref / f'{ref}.db').resolve()}"
