"""Paused trials: a trial state Optuna lacks, kept in any Optuna storage, for schedulers that pause and resume.

Optuna's pruners can only stop a trial; ftsweep can checkpoint a trial and resume it exactly, so a scheduler
(search/components/schedulers.py) may instead *pause* it at an evaluation and continue it later, or never. In
the study a pause is two trials:

- the paused trial ends PRUNED at the step it reached, with `paused_at` (that step) and its curve: samplers read
  it as any pruned trial, and its checkpoint stays in `<output_dir>/checkpoints/STUDY/trial-N`;
- its *continuation* is queued as a WAITING trial with the same params, `retry_of` = the paused trial and
  `retry_cause` = "paused". Only a scheduler's promotion pops it (`QueueStudy` passes over it otherwise); it
  then resumes from the checkpoint on whichever worker popped it, as a re-run of a preempted trial does
  (search/backends/_optuna.py `_resume_point`), its curve replayed first.

Popping is Optuna's atomic WAITING -> RUNNING transition (a row update in PostgreSQL, the log's order in a
journal), so two workers never resume the same paused trial. Once nothing runs and no new trial is owed, the
paused trials left are ended: each continuation is popped and recorded PRUNED at the step its trial reached,
its checkpoint removed. Until then a paused trial costs disk only. The pair counts once toward n_trials.

Example:
    >>> study = optuna.create_study()
    >>> trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    >>> trial.report(0.5, 4)
    >>> mark_paused(trial, 4)
    >>> frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    >>> park(study, frozen)
    >>> [(p.number, p.origin.number, p.step) for p in paused_trials(study)]
    [(1, 0, 4)]
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..components.schedulers import Lineage
from .record import ATTEMPT, OVERRIDES, PAUSED, PAUSED_AT, RETRY_CAUSE, RETRY_OF
from .retries import enqueue_retry


@dataclass(frozen=True)
class PausedTrial:
    """A paused trial: its queued continuation (`trial_id`, `number`) and the trial it continues (`origin`)."""

    trial_id: int
    number: int
    origin: FrozenTrial

    @property
    def step(self) -> int:
        """The step the paused trial reached: its checkpoint's."""
        return int(self.origin.user_attrs[PAUSED_AT])


def mark_paused(trial: optuna.Trial, step: int) -> None:
    """Before the trial is told PRUNED: it is paused at `step`, not stopped (its checkpoint is kept)."""
    trial.set_user_attr(PAUSED_AT, int(step))


def park(study: optuna.Study, paused: FrozenTrial) -> None:
    """After the paused trial was told PRUNED: queue its continuation, for a scheduler to promote (or end).
    A worker killed between the two leaves the trial pruned at the step it reached, as an ended pause."""
    attrs = paused.user_attrs
    enqueue_retry(study, paused, {RETRY_OF: paused.number, RETRY_CAUSE: PAUSED, ATTEMPT: attrs.get(ATTEMPT, 0),
                                  OVERRIDES: dict(attrs.get(OVERRIDES, {}))})


def is_continuation(trial: FrozenTrial) -> bool:
    """A paused trial's continuation (waiting, running or ended)."""
    return trial.user_attrs.get(RETRY_CAUSE) == PAUSED


def paused_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[PausedTrial]:
    """The study's paused trials, oldest pause first."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    by_number = {t.number: t for t in trials}
    paused = []
    for trial in trials:
        if trial.state == TrialState.WAITING and is_continuation(trial):
            origin = by_number.get(trial.user_attrs[RETRY_OF])
            if origin is not None and PAUSED_AT in origin.user_attrs:
                paused.append(PausedTrial(trial._trial_id, trial.number, origin))
    return paused


def claim(study: optuna.Study, trial_id: int) -> bool:
    """Pop this WAITING trial for this worker: True if this worker got it (Optuna's atomic state transition)."""
    return study._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)


def lineages(trials: list[FrozenTrial]) -> dict[int, Lineage]:
    """{trial number: its lineage} of every configuration of the study with a curve, by the trial that stands for
    it now: the last of its trials, or while it is paused the paused trial. Failed trials are left out."""
    by_number = {t.number: t for t in trials}
    continued = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    waiting = {t.user_attrs[RETRY_OF] for t in trials if t.state == TrialState.WAITING and is_continuation(t)}

    def root(trial: FrozenTrial) -> int:
        while RETRY_OF in trial.user_attrs and trial.user_attrs[RETRY_OF] in by_number:
            trial = by_number[trial.user_attrs[RETRY_OF]]
        return trial.number

    found: dict[int, Lineage] = {}
    for trial in trials:
        if trial.state in (TrialState.WAITING, TrialState.FAIL) or not trial.intermediate_values:
            continue
        paused = trial.state == TrialState.PRUNED and PAUSED_AT in trial.user_attrs
        if trial.number in continued and not (paused and trial.number in waiting):
            continue  # superseded by its continuation or re-run
        state = "paused" if paused else trial.state.name.lower()
        found[trial.number] = Lineage(root(trial), trial.number, dict(trial.intermediate_values), state)
    return found


def pauses_now(trial: optuna.Trial, step: int) -> bool:
    """`should_pause` for a running trial object at its evaluation of `step`."""
    return should_pause(trial.study, trial._trial_id, step)


def should_pause(study: optuna.Study, trial_id: int, step: int) -> bool:
    """Whether the study's pruner, a pausing scheduler, pauses this running trial at its evaluation of `step`."""
    pause = getattr(study.pruner, "pause", None)
    if pause is None or not study.pruner.decides_at(step):
        return False
    trials = study.get_trials(deepcopy=False)
    trial = next(t for t in trials if t._trial_id == trial_id)
    return pause(study, trial, lineages(trials))


def promotion(study: optuna.Study, paused: list[PausedTrial], *, closing: bool = False) -> PausedTrial | None:
    """The paused trial the study's pruner promotes now, if it is a pausing scheduler and promotes one; `closing`:
    nothing else is left to run, and the scheduler may finish one (`PausingScheduler.finish`)."""
    promote = getattr(study.pruner, "finish" if closing else "promote", None)
    if promote is None or not paused:
        return None
    pick = promote(study, lineages(study.get_trials(deepcopy=False)))
    return next((p for p in paused if pick is not None and p.origin.number == pick.number), None)
