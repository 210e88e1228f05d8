"""Trials whose process is gone: found, failed and queued again per the retry policy.

A RUNNING trial whose worker (host:pid, stamped by `TrialRecord.stamp`) no longer exists on this
host, or that was never stamped, belongs to a dead process: `recover_interrupted` fails it and queues
its re-run. Trials of other hosts are left to their storage's heartbeat (`retry_stale_trial`).
"""

from __future__ import annotations

import datetime
import os
import time

import optuna
from optuna.trial import TrialState

from ..settings import RetryPolicy
from .record import INTERRUPTED, INTERRUPTED_CAUSE, PREEMPTED, RETRY_REASON, WORKER, TrialRecord, superseded_numbers
from .retries import enqueue_retry, plan_retry
from .storage import HOST


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


def _orphans_unstamped(study: optuna.Study, trials: list, *, poll_s: float = 0.1) -> set[int]:
    """Numbers of RUNNING trials without a `worker` stamp whose creator died before stamping them.
    A young one may be being stamped by a live process right now: it is polled until stamped, or
    until it is UNSTAMPED_GRACE_S old."""
    pending = {t._trial_id: t for t in trials if t.state == TrialState.RUNNING and WORKER not in t.user_attrs}
    orphans = set()
    while pending:
        now = datetime.datetime.now()
        for trial_id, trial in list(pending.items()):
            current = study._storage.get_trial(trial_id)
            if current.state != TrialState.RUNNING or WORKER in current.user_attrs:
                del pending[trial_id]  # stamped (or finished) meanwhile: a live process owns it
            elif trial.datetime_start is None or (now - trial.datetime_start).total_seconds() >= UNSTAMPED_GRACE_S:
                orphans.add(trial.number)
                del pending[trial_id]
        if pending:
            time.sleep(poll_s)
    return orphans


def mark_trial_interrupted(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """`mark_interrupted` for a trial asked of `study` (e.g. a PBT member Ray never started)."""
    mark_interrupted(study._storage, trial._trial_id, reason)


def mark_interrupted(storage, trial_id: int, reason: str) -> None:
    """FAIL a trial that was cut short (not its own fault): it does not count toward n_trials and
    `recover_interrupted` queues its params again."""
    TrialRecord(storage, trial_id).failed(INTERRUPTED_CAUSE, reason)
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def fail_lost_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str, policy=None) -> bool:
    """FAIL a RUNNING trial whose worker is gone, and queue it again per the retry policy.
    Returns True when it was re-queued. Safe against several workers recovering at once: only the one
    whose FAIL lands re-queues it."""
    retry, why = plan_retry(trial, PREEMPTED, policy or RetryPolicy(), budget=None)
    storage = study._storage
    try:
        TrialRecord(storage, trial._trial_id).failed(PREEMPTED, f"preempted: {reason}; {why}", requeued=bool(retry))
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
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry, _ = plan_retry(trial, PREEMPTED, policy, budget=None)
        if retry:
            retry[RETRY_REASON] = f"no heartbeat from trial {trial.number}'s worker for {policy.grace_period} s"
            enqueue_retry(study, trial, retry)

    return callback


def recover_interrupted(study: optuna.Study, policy=None) -> list[int]:
    """Fail trials left RUNNING by a dead process on this host (or never stamped by their creator) and
    queue them again per the retry policy; also queue any interrupted trial not queued yet. Returns the
    numbers queued. Trials of live workers, or of other hosts, are left to their heartbeats."""
    policy = policy or RetryPolicy()
    trials = study.get_trials(deepcopy=False)
    orphans = _orphans_unstamped(study, trials)
    superseded = superseded_numbers(trials)
    requeued = []
    for trial in trials:
        if trial.state == TrialState.RUNNING and (
                trial.number in orphans or _worker_is_gone(trial.user_attrs.get(WORKER))):
            if fail_lost_trial(study, trial, "its worker process ended mid-trial", policy):
                requeued.append(trial.number)
        elif (trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED)
              and trial.number not in superseded):
            retry, _ = plan_retry(trial, INTERRUPTED_CAUSE, policy, budget=None)
            enqueue_retry(study, trial, retry)
            requeued.append(trial.number)
    return requeued
