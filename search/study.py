"""The study store: the single source of truth every command reads, whichever backend wrote it.

What ftsweep keeps on each Optuna trial (so `best`, `show`, `export` need nothing else):
    params                      searched values (Optuna's own record)
    intermediate_values         the sweep metric at each evaluation step
    user_attrs["config"]        the full resolved params: searched, fixed and derived
    user_attrs["metrics"]       final metrics of a completed trial
    user_attrs["eval_history"]  every evaluation: step + all metrics
    user_attrs["fail_reason"]   why a FAIL trial failed ("TrialDiverged: ...", "interrupted: ...")
    user_attrs["worker"]        host:pid that ran it, to tell a dead worker's trial from a live one
    user_attrs["retry_of"]      on a re-run: the failed trial it repeats (see search/retries.py), with
                                "retry_cause", "attempt" and "overrides" (e.g. a halved batch)
    user_attrs["retried"]       on a failed trial: it was queued again, so it no longer counts toward n_trials
    user_attrs["slot"]          a WAITING trial holding one of the n_trials places (see search/workers.py)
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from collections.abc import Collection
from pathlib import Path

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # the interface Optuna's own RDBStorage implements
from optuna.trial import TrialState

from spaces import ConfigError

# FTSWEEP_HOST names this machine where hostnames are not unique (containers that all call themselves
# "localhost"): a worker on another host is never judged dead by its process id.
HOST = os.environ.get("FTSWEEP_HOST") or socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"


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


def open_storage(url: str, *, heartbeat=None, on_stale=None):
    """What `optuna.create_study/load_study(storage=...)` takes for a storage URL: the URL itself for
    databases, a `JournalStorage` for `journal:///FILE` (several processes on one node or a shared
    filesystem, without a database server).

    With `heartbeat` (a RetryPolicy), storages shared by several processes heartbeat running trials:
    `study.optimize` then fails a trial silent for `grace_period` and passes it to `on_stale(study,
    trial)`. PostgreSQL/MySQL use Optuna's RDB heartbeat; the journal file uses the same mechanism
    through `HeartbeatJournalStorage`; SQLite (one worker) needs none.

    Example:
        >>> type(open_storage("journal:///runs/demo/demo.log")).__name__  # doctest: +SKIP
        'JournalStorage'
    """
    if url.startswith(JOURNAL):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        backend = JournalFileBackend(url.removeprefix(JOURNAL))
        if heartbeat is None:
            return JournalStorage(backend)
        return HeartbeatJournalStorage(backend, heartbeat_interval=heartbeat.heartbeat_interval,
                                       grace_period=heartbeat.grace_period, stale_trial_callback=on_stale)
    if heartbeat is None or url.startswith("sqlite"):
        return url
    import warnings

    from optuna.storages import RDBStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=heartbeat.heartbeat_interval, grace_period=heartbeat.grace_period,
                          heartbeat_stale_trial_callback=on_stale)


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage with the heartbeat Optuna gives its RDB storage: `study.optimize`
    refreshes each running trial's `heartbeat` system attr every `heartbeat_interval` s, and
    `optuna.storages.fail_stale_trials` fails those older than `grace_period` (wall-clock time of the
    writing nodes: keep the grace period well above their clock skew).

    Example:
        >>> from optuna.storages.journal import JournalFileBackend
        >>> storage = HeartbeatJournalStorage(JournalFileBackend("s.log"), heartbeat_interval=10,
        ...                                   grace_period=60)  # doctest: +SKIP
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


def record_sweep(study: optuna.Study, sweep) -> None:
    """Store the sweep on its study at every launch, so every command (and `ftsweep worker`) can rebuild
    the objective from the store. Without secrets: the storage URL is not stored (it may hold a password)."""
    study.set_user_attr("sweep", sweep.spec.model_dump(mode="json", exclude={"storage"}))
    study.set_user_attr("space", sweep.space.to_dict())
    study.set_user_attr("metric", sweep.metric_label)
    with warnings.catch_warnings():  # experimental in name only: stable since Optuna 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(sweep.metric_names)  # Optuna's own: plots and the dashboard label axes with them
    study.set_user_attr("constraints", [c.describe() for c in sweep.spec.constraints])
    study.set_user_attr("objective", sweep.spec.objective.name)
    study.set_user_attr("backend", sweep.spec.backend)


def record_constraints(trial: optuna.Trial, constraints, metrics: dict[str, float]) -> None:
    """Give a finished trial its constraint values (Optuna's `set_constraint`: feasible when all <= 0),
    which samplers, `best_trial` and the Pareto front read; also kept readable as user attr
    `constraints` {"peak_memory_mb <= 2048": value}."""
    values = {}
    for constraint in constraints:
        values[constraint.describe()] = constraint.violation(metrics)
        trial.set_constraint(constraint.describe(), values[constraint.describe()])
    if values:
        trial.set_user_attr("constraints", values)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """No recorded constraint is violated (a trial without constraints is feasible)."""
    return all(v <= 0 for v in trial.user_attrs.get("constraints", {}).values())


def counts_toward_budget(trial: optuna.trial.FrozenTrial, superseded: Collection[int] = ()) -> bool:
    """Finished trials count toward n_trials, except a failed one that runs again: its re-run counts
    instead. `superseded` are numbers of trials some `retry_of` points at (see `superseded_numbers`)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state != TrialState.FAIL:
        return False
    attrs = trial.user_attrs
    return not (attrs.get("interrupted") or attrs.get("retried") or trial.number in superseded)


def superseded_numbers(trials) -> set[int]:
    """Numbers of the trials that were queued again (a trial failed by a heartbeat cannot be marked itself)."""
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def finished_count(trials) -> int:
    """How many of `trials` count toward n_trials."""
    superseded = superseded_numbers(trials)
    return sum(counts_toward_budget(t, superseded) for t in trials)


def _worker_is_gone(worker: str | None) -> bool:
    if not worker:
        return False  # unknown origin: leave it (a heartbeat-enabled storage will time it out)
    host, _, pid = worker.rpartition(":")
    if host != HOST or not pid.isdigit():
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


def fail_lost_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str, policy=None) -> bool:
    """FAIL a RUNNING trial whose worker is gone, and queue it again per the retry policy.
    Returns True when it was re-queued. Safe against several workers recovering at once: only the one
    whose FAIL lands re-queues it."""
    from .retries import PREEMPTED, RetryPolicy, enqueue_retry, plan_retry

    retry, why = plan_retry(trial, PREEMPTED, policy or RetryPolicy(), budget=None)
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"preempted: {reason}; {why}")
        storage.set_trial_user_attr(trial._trial_id, "failure_cause", PREEMPTED)
        if retry:
            storage.set_trial_user_attr(trial._trial_id, "retried", True)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another process failed (or finished) it first
    if retry:
        enqueue_retry(study, trial, retry)
    return retry is not None


def retry_stale_trial(policy):
    """The heartbeat callback: Optuna has already failed `trial` (its worker went silent), so its
    re-run carries the reason. Re-queued per the retry policy, like any lost worker's trial."""
    from .retries import PREEMPTED, enqueue_retry, plan_retry

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry, _ = plan_retry(trial, PREEMPTED, policy, budget=None)
        if retry:
            retry["retry_reason"] = f"no heartbeat from trial {trial.number}'s worker for {policy.grace_period} s"
            enqueue_retry(study, trial, retry)

    return callback


def recover_interrupted(study: optuna.Study, policy=None) -> list[int]:
    """Fail trials left RUNNING by a dead process on this host (or never stamped by their creator) and
    queue them again per the retry policy; also queue any interrupted trial not queued yet. Returns the
    numbers queued. Trials of live workers, or of other hosts, are left to their heartbeats."""
    from .retries import INTERRUPTED, RetryPolicy, enqueue_retry, plan_retry

    policy = policy or RetryPolicy()
    trials = study.get_trials(deepcopy=False)
    orphans = _orphans_unstamped(study, trials)
    superseded = superseded_numbers(trials)
    requeued = []
    for trial in trials:
        if trial.state == TrialState.RUNNING and (
                trial.number in orphans or _worker_is_gone(trial.user_attrs.get("worker"))):
            if fail_lost_trial(study, trial, "its worker process ended mid-trial", policy):
                requeued.append(trial.number)
        elif (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
              and trial.number not in superseded):
            retry, _ = plan_retry(trial, INTERRUPTED, policy, budget=None)
            enqueue_retry(study, trial, retry)
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


def default_storage_url(directory: Path, study_name: str) -> str:
    """The storage of a sweep that names none: Optuna's journal file `<directory>/<study>.journal`.

    A journal file costs ~6 ms of storage work per trial where SQLite costs ~50 (docs/benchmarks.md), and
    several worker processes on one node or a shared filesystem may write it, so `--workers N` works
    without a database server. A `<study>.db` SQLite file that an earlier ftsweep wrote there is kept,
    so its study resumes.

    Example:
        >>> default_storage_url(Path("/work/runs/demo"), "demo")  # doctest: +SKIP
        'journal:////work/runs/demo/demo.journal'
    """
    legacy = directory / f"{study_name}.db"
    if legacy.exists():
        return f"sqlite:///{legacy}"
    return f"{JOURNAL}{directory / f'{study_name}.journal'}"


# A study file named on the command line: its suffix says which storage reads it.
STUDY_FILES = {".journal": JOURNAL, ".db": "sqlite:///"}


def _study_file(ref: str) -> tuple[Path, str] | None:
    """(file, study name or '') when `ref` names a study file (`FILE.journal`, `FILE.db`, `FILE.db:NAME`)."""
    for suffix in STUDY_FILES:
        file, sep, name = ref.partition(suffix + ":")
        if sep:
            return Path(file + suffix).expanduser(), name
    path = Path(ref).expanduser()
    return (path, "") if path.suffix in STUDY_FILES else None


def _default_study_file(name: str) -> Path | None:
    """`runs/<name>/<name>.journal` (or `.db`, written by earlier versions) when it exists."""
    for suffix in STUDY_FILES:
        path = Path("runs") / name / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def _file_url(path: Path) -> str:
    return f"{STUDY_FILES[path.suffix]}{path.resolve()}"


def resolve_study(ref: str, storage: str | None = None) -> optuna.Study:
    """Open the study a CLI argument names. `ref` may be:

    - a study name with `--storage URL` (or `FTSWEEP_STORAGE` in the environment);
    - a sweep file: its storage and study name;
    - a study file holding one study: a `.journal` file or a `.db` SQLite file (`FILE.journal:STUDY`,
      `FILE.db:STUDY` for one of several);
    - a study name whose default file exists: `runs/<name>/<name>.journal` (or `.db`).

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
        url = sweep.storage_url
        file = study_file_of(url)
        if file is not None and not file.exists():
            raise ConfigError("this sweep has not been launched yet (no study file)", key="study", value=ref,
                              hint=f"Fix: ftsweep launch {ref}")
        return load_existing_study(sweep.study_name, url)
    named = _study_file(ref)
    if named is not None:
        file, name = named
        if not file.exists():
            raise ConfigError("no such study file", key="study", value=str(file))
        url = _file_url(file)
        if not name:
            names = optuna.study.get_all_study_names(storage=open_storage(url))
            if len(names) != 1:
                raise ConfigError(f"the file holds several studies: name one as FILE{file.suffix}:STUDY",
                                  key="study", value=ref, allowed=names)
            name = names[0]
        return load_existing_study(name, url)
    _check_study_name(ref)
    default = _default_study_file(ref)
    if default is not None:
        return load_existing_study(ref, _file_url(default))
    known = sorted({p.parent.name for suffix in STUDY_FILES for p in Path("runs").glob(f"*/*{suffix}")
                    if p.stem == p.parent.name}) if Path("runs").exists() else []
    raise ConfigError(
        "no such study", key="study", value=ref, allowed=known or "(no study under ./runs)",
        hint="Fix: pass the sweep file, the study file (.journal or .db), or --storage URL with the study name.",
    )


def _check_study_name(name: str) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError("a study name cannot contain path separators", key="study", value=name)



def resolve_storage(ref: str) -> str:
    """A storage URL from a URL, a study file, a sweep file or a study name (for `ftsweep dashboard`)."""
    if "://" in ref:
        return ref
    named = _study_file(ref)
    if named is not None:
        if not named[0].exists():
            raise ConfigError("no such study file", key="storage", value=ref)
        return _file_url(named[0])
    resolve_study(ref)  # a clear error when there is no such study
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        from .spec import load_sweep

        return load_sweep(ref).storage_url
    return _file_url(_default_study_file(ref))
