"""What a sweep has spent, read from its study, against `budget.sweep` (objectives' SweepBudget).

| rule        | spent                                                                                      |
|-------------|--------------------------------------------------------------------------------------------|
| hours       | the launch's deadline (with `timeout`, the earlier): the backend sets it, like timeout's    |
| gpu_hours   | each trial's training seconds (`duration_s`; a running one's so far) x its devices         |
| trial_steps | each trial's steps trained: its last evaluated step, less the step it resumed from         |

Once a rule is spent no trial starts and no paused trial resumes; trials already running finish, and paused
trials are ended (search/store/pausing.py). Every worker reads the same study, so the rule holds across workers.

Example:
    >>> from objectives import SweepBudget
    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> trial.set_user_attr(EVAL_HISTORY, [{"step": 10, "eval_loss": 1.0}, {"step": 20, "eval_loss": 0.9}])
    >>> spent(study.get_trials(), SweepBudget(trial_steps=20))
    'budget.sweep.trial_steps 20 spent (20 steps trained)'
"""

from __future__ import annotations

import datetime as dt

import optuna
from optuna.trial import FrozenTrial, TrialState

from .record import DURATION, EVAL_HISTORY, STEP


def trained_steps(trial: FrozenTrial) -> int:
    """Steps this trial trained itself: a continuation or re-run from a checkpoint counts from there."""
    history = trial.user_attrs.get(EVAL_HISTORY) or []
    if not history:
        return 0
    start = max((int(h["resumed_from"]) for h in history if "resumed_from" in h), default=0)
    return max(int(history[-1][STEP]) - start, 0)


def device_seconds(trial: FrozenTrial, devices: int) -> float:
    """Training seconds x devices; a running trial's so far (from its start)."""
    seconds = trial.user_attrs.get(DURATION)
    if seconds is None and trial.state == TrialState.RUNNING and trial.datetime_start is not None:
        seconds = (dt.datetime.now() - trial.datetime_start).total_seconds()
    return float(seconds or 0.0) * devices


def spent(trials: list[FrozenTrial], budget, devices: int = 1) -> str | None:
    """Which rule of `budget` (a SweepBudget, or None) these trials have spent, as a sentence; None if none."""
    if budget is None:
        return None
    if budget.trial_steps is not None:
        steps = sum(trained_steps(t) for t in trials)
        if steps >= budget.trial_steps:
            return f"budget.sweep.trial_steps {budget.trial_steps} spent ({steps} steps trained)"
    if budget.gpu_hours is not None:
        hours = sum(device_seconds(t, devices) for t in trials) / 3600
        if hours >= budget.gpu_hours:
            return f"budget.sweep.gpu_hours {budget.gpu_hours:g} spent ({hours:.3g} device-hours)"
    return None


def stop_rule(budget, devices: int = 1):
    """`rule(study) -> reason | None` for QueueStudy's `stop_when` and the backends' loops; None without rules
    to read from the trials (hours is a deadline)."""
    if budget is None or (budget.trial_steps is None and budget.gpu_hours is None):
        return None

    def rule(study: optuna.Study) -> str | None:
        return spent(study.get_trials(deepcopy=False), budget, devices)

    return rule
