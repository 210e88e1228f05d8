"""Many worker processes on one study: the trial queue that caps a sweep at exactly n_trials.

How n_trials holds across any number of workers, on any node:

- the launch that prepares the study (`ftsweep launch`, or `--workers 0` before a SLURM array) adds
  one WAITING trial, a *slot*, for every trial still owed: `n_trials - finished - running - waiting`;
- workers only ever pop WAITING trials (Optuna pops atomically: two workers never get the same one)
  and never create a fresh trial, so no worker can overshoot, however many race at the end;
- a failed trial that runs again (see search/store/retries.py) is queued as a new WAITING trial and stops
  counting, so the study still ends with n_trials finished trials;
- a worker with nothing to pop waits while other workers' trials run (one may be re-queued when its
  worker dies, after the heartbeat grace period), and leaves when the queue is empty and nothing runs.

Example (one node, four GPUs):
    ftsweep launch sweep.yaml --gpus 0,1,2,3     # the default journal file takes several workers
Example (a cluster): `ftsweep launch sweep.yaml --workers 0`, then `ftsweep worker NAME` on each
node with FTSWEEP_STORAGE=postgresql://... (scripts/cluster/slurm_workers.sbatch).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from spaces import ConfigError

from ..secrets import redact_url
from .pausing import claim, is_continuation, paused_trials, promotion
from .record import SLOT, finished_count

SQLITE_ALTERNATIVES = (
    "SQLite takes one worker process: concurrent writers hit 'database is locked', and on a network "
    "filesystem (NFS) it can corrupt the study."
)
SQLITE_FIX = ("Fix: --storage journal:///runs/NAME/NAME.journal (processes on one node or a shared filesystem), "
              "or --storage postgresql://USER@HOST/DB (clusters; scripts/cluster/start_postgres.sh starts one) "
              "with the full URL in $FTSWEEP_STORAGE so its password stays out of files and `ps`.")


class NoTrialLeft(Exception):
    """The queue is empty and no running trial can come back into it: the worker's work is done."""


def refuse_sqlite(url: str, *, key: str, workers: int | str) -> None:
    """SQLite is for one worker: refuse it for several, naming what to use instead."""
    if url.startswith("sqlite"):
        raise ConfigError(SQLITE_ALTERNATIVES, key=key, value=f"{redact_url(url)} with {workers} workers",
                          hint=SQLITE_FIX)


def top_up_slots(study: optuna.Study, n_trials: int) -> int:
    """Queue a WAITING slot for each trial the study still owes; returns how many were added.
    Run by the one process that prepares the study, never by workers (two would double the slots)."""
    trials = study.get_trials(deepcopy=False)
    pending = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    missing = n_trials - finished_count(trials) - pending
    for _ in range(max(missing, 0)):
        # No params and no `fixed_params`: every sampler (grid included) samples a slot like a fresh trial.
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={SLOT: True}))
    return max(missing, 0)


def to_be_ended(trial: optuna.Trial) -> bool:
    """Whether the queue handed out this trial to be ended, not run: a paused trial no scheduler promoted."""
    return trial._trial_id in getattr(trial.study, "ending", ())


class QueueStudy(optuna.Study):
    """A study whose `ask()` only pops queued trials (see the module docstring): `study.optimize`
    ends with `NoTrialLeft` instead of creating trial n_trials + 1.

    `waits_for_others`: while trials of other workers run, wait (polling every `poll_s`) for one of
    them to be re-queued after its worker died, instead of leaving; `deadline` (epoch s) ends the wait.

    Paused trials (search/store/pausing.py): their continuations are popped only when the study's pruner, a
    pausing scheduler, promotes one (`pausing.promotion`), and a promotion comes before any new
    trial. Once nothing runs and nothing else is queued, the paused trials left are popped one by one to be
    ended (their ids in `ending`: the backend records each PRUNED at the step it reached, without training),
    unless no configuration has completed yet: the scheduler then resumes its best paused one to the end first.
    """

    def __init__(self, *args: Any, waits_for_others: bool = True, poll_s: float = 2.0,
                 deadline: float | None = None, on_idle=None, stop_when=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_when = stop_when  # study -> reason | None: a budget.sweep rule spent (search/store/sweep_budget.py)
        self.stopped_by: str | None = None
        self.waits_for_others = waits_for_others
        self.poll_s = poll_s
        self.deadline = deadline
        self.on_idle = on_idle  # called while waiting: recover trials of dead workers on this host
        self.ending: set[int] = set()  # ids of paused trials popped to be ended, not run

    def _pop_waiting_trial_id(self) -> int | None:
        while True:
            self.stopped_by = self.stopped_by or (self.stop_when(self) if self.stop_when is not None else None)
            trial_id = self._pop_next() if self.stopped_by is None else None
            if trial_id is not None:
                return trial_id
            late = self.stopped_by is not None or (self.deadline is not None and time.time() >= self.deadline)
            running = self._storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if not running and (not late or self.stopped_by is not None):  # a spent budget ends paused trials too
                trial_id = self._pop_paused_to_end()
                if trial_id is not None:
                    return trial_id
            if not self.waits_for_others or late or not running:
                raise NoTrialLeft
            time.sleep(self.poll_s)
            # Optuna's optimize loop fails stale trials only before each ask; this wait is inside one.
            if is_heartbeat_enabled(self._storage):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    fail_stale_trials(self)
            if self.on_idle is not None:
                self.on_idle(self)

    def _pop_next(self) -> int | None:
        """A promoted paused trial if the scheduler promotes one, else the oldest queued trial."""
        waiting = self._storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.WAITING,))
        if any(is_continuation(t) for t in waiting):
            paused = paused_trials(self, self._storage.get_all_trials(self._study_id, deepcopy=False))
            while paused:
                pick = promotion(self, paused)
                if pick is None:
                    break
                if claim(self, pick.trial_id):
                    return pick.trial_id
                paused = [p for p in paused if p.trial_id != pick.trial_id]  # another worker promoted it first
        for trial in waiting:
            if not is_continuation(trial) and claim(self, trial._trial_id):
                return trial._trial_id
        return None

    def _pop_paused_to_end(self) -> int | None:
        """Nothing else is left: a paused trial the scheduler finishes (while no configuration has completed), else
        one to end."""
        pick = promotion(self, paused_trials(self), closing=True) if self.stopped_by is None else None
        if pick is not None and claim(self, pick.trial_id):
            return pick.trial_id
        for paused in paused_trials(self):
            if claim(self, paused.trial_id):
                self.ending.add(paused.trial_id)
                return paused.trial_id
        return None
