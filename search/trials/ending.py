"""How a trial ends, decided once for every backend and the pack loop: one decision table, then one `settle`.

    decide(...)  -> Ending        what ended it (an error, a scheduler's stop or pause, divergence, its budget)
    settle(...)                   the study record, the constraints and the W&B run told the same thing

The table, first match wins:

    a failure (exception, lost rank, error)       FAIL     its cause (oom, preempted, interrupted, diverged, error)
    the engine saw the loss diverge               FAIL     diverged
    a scheduler paused it                         PRUNED   paused (its continuation is queued by the store)
    a scheduler stopped it before its budget      PRUNED
    a final objective metric is NaN or infinite   FAIL     diverged (its metrics are recorded beside the reason)
    otherwise                                     COMPLETE with the objective metrics as its values

Every failure reason goes through `scrub_secrets` here, so a storage URL with its password in an exception
text reaches neither the study, the log nor the W&B run, whichever backend ran the trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from objectives import TrialPaused

from ..secrets import scrub_secrets
from ..store.pausing import mark_paused
from ..store.record import DIVERGED, INTERRUPTED_CAUSE, PREEMPTED, TrialRecord, record_constraints
from ..store.retries import WorkerPreempted, failure_cause

State = Literal["complete", "pruned", "paused", "failed"]
# (cause) -> (what the retry policy did, whether the trial was queued again): the Optuna backend's policy
RetryPlan = Callable[[str], "tuple[str | None, bool]"]


@dataclass(frozen=True)
class Ending:
    """A trial's end: its state, and for a failure its cause and (scrubbed) reason.

    Example:
        >>> decide(["eval_loss"], {"eval_loss": float("nan"), "steps": 8.0}).reason
        'TrialDiverged: final eval_loss is nan'
    """

    state: State
    metrics: dict[str, float] = field(default_factory=dict)
    values: list[float] | None = None  # the objective values of a complete trial, in the sweep's metric order
    cause: str | None = None
    reason: str | None = None
    step: int | None = None  # where a paused trial stopped
    final: bool = False  # `metrics` are those of a finished run (recorded as its metrics, even when it failed)

    @property
    def optuna_state(self) -> optuna.trial.TrialState:
        return {"complete": optuna.trial.TrialState.COMPLETE, "failed": optuna.trial.TrialState.FAIL}.get(
            self.state, optuna.trial.TrialState.PRUNED)


def failed(cause: str, reason: str, metrics: dict[str, float] | None = None, *, final: bool = False) -> Ending:
    """A failure: `reason` scrubbed of any password here, the one place every backend passes through."""
    return Ending("failed", dict(metrics or {}), cause=cause, reason=scrub_secrets(reason), final=final)


def decide(metric_names: Sequence[str], metrics: dict[str, float], *, failure: tuple[str, str] | None = None,
           diverged: str | None = None, paused_at: int | None = None, stopped: bool = False) -> Ending:
    """The table above. `failure`: (cause, reason); `diverged`: the engine's text when the loss diverged;
    `paused_at`: the step a scheduler paused it at; `stopped`: a scheduler stopped it before its budget.

    Example:
        >>> decide(["eval_loss"], {"eval_loss": 2.5}).values
        [2.5]
        >>> decide(["eval_loss"], {"eval_loss": 2.5}, stopped=True).state
        'pruned'
    """
    if failure is not None:
        return failed(*failure, metrics)
    if diverged:
        return failed(DIVERGED, f"TrialDiverged: {diverged}", metrics)
    if paused_at is not None:
        return Ending("paused", dict(metrics), step=int(paused_at))
    if stopped:
        return Ending("pruned", dict(metrics))
    values = [float(metrics.get(name, math.nan)) for name in metric_names]
    bad = next(((name, v) for name, v in zip(metric_names, values) if not math.isfinite(v)), None)
    if bad is not None:
        return failed(DIVERGED, f"TrialDiverged: final {bad[0]} is {bad[1]}", metrics, final=True)
    return Ending("complete", dict(metrics), values=values, final=True)


def from_exception(exc: BaseException, metrics: dict[str, float]) -> Ending:
    """The ending of a trial whose run raised `exc` (pruned, paused, preempted, interrupted, or a failure).

    Example:
        >>> from_exception(ValueError("postgresql://u:hunter2@db/x refused"), {}).reason
        'ValueError: postgresql://u:***@db/x refused'
    """
    if isinstance(exc, optuna.TrialPruned):
        return Ending("pruned", dict(metrics))
    if isinstance(exc, TrialPaused):
        return Ending("paused", dict(metrics), step=exc.step)
    if isinstance(exc, WorkerPreempted):
        return failed(PREEMPTED, f"preempted: {exc}", metrics)
    if isinstance(exc, KeyboardInterrupt):
        return failed(INTERRUPTED_CAUSE, "interrupted: stopped by the user (Ctrl-C)", metrics)
    return failed(failure_cause(exc), exception_text(exc), metrics)


def exception_text(exc: BaseException) -> str:
    """'Type: first line of the message' (the full traceback stays in the worker's log)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def settle(ending: Ending, record: TrialRecord, tracked, *, duration_s: float | None, trial: optuna.Trial,
           constraints: Iterable = (), retry: RetryPlan | None = None) -> None:
    """Tell the study record and the trial's tracked run how the trial ended (the caller tells Optuna's state).

    A run that finished keeps its final metrics in the record even when they failed it (a NaN final loss);
    `retry` is asked, for a failure, what the retry policy does with it. A paused trial is marked so
    (search/store/pausing.py). The tracked run gets the last metrics whatever the state.
    """
    if ending.final:
        record.completed(ending.metrics, duration_s=duration_s)
    else:
        record.ended(duration_s=duration_s)
    if ending.state == "complete":
        record_constraints(trial, constraints, ending.metrics)
    elif ending.state == "failed":
        outcome, requeued = retry(ending.cause) if retry is not None else (None, False)
        record.failed(ending.cause, ending.reason, retry=outcome, requeued=requeued)
    elif ending.state == "paused":
        mark_paused(trial, ending.step)
    tracked.finish(ending.state, ending.metrics, *([ending.reason] if ending.state == "failed" else []))


def last_metrics(history: list[dict[str, Any]], step_key: str = "step") -> dict[str, float]:
    """The metrics of a trial's last evaluation, or {} (what a trial stopped between evaluations reports)."""
    return {k: v for k, v in (history[-1] if history else {}).items() if k != step_key}
