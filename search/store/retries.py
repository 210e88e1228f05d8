"""What happens to a trial that did not finish on its own: its failure cause, and whether it runs again.

| cause       | what happened                                   | retried?                                              |
|-------------|-------------------------------------------------|-------------------------------------------------------|
| preempted   | its worker was killed, preempted or went silent | yes, same params, up to `retries.max_retries`         |
| interrupted | the user stopped the sweep (Ctrl-C)             | yes, same params, when the sweep resumes              |
| oom         | out of memory                                   | yes, half the batch and twice the gradient            |
|             |                                                 | accumulation (same effective batch), down to batch 1  |
| diverged    | NaN/inf loss                                    | never: the same params would diverge again            |
| error       | any other exception                             | only with `retries.retry_errors`, up to `max_retries` |

A retry is a new trial queued with the failed trial's params and these user attrs:
`retry_of` (the failed trial's number), `retry_cause`, `attempt` (1 for the first re-run) and
`overrides` (params changed for the re-run, e.g. the halved batch). The failed trial stays FAIL with
its `fail_reason`; once re-run it no longer counts toward `n_trials` (its retry does).
"""

from __future__ import annotations

import signal
from typing import Any

import optuna

from objectives import TrialDiverged
from objectives.engine.distributed import RankLost

from ..settings import RetryPolicy
from .record import ATTEMPT, CONFIG, DIVERGED, ERROR, OOM, OVERRIDES, PREEMPTED, RETRY_CAUSE, RETRY_OF
from .record import INTERRUPTED_CAUSE as INTERRUPTED


class WorkerPreempted(KeyboardInterrupt):
    """Raised in a worker by SIGTERM (a scheduler preempting or cancelling the job): like Ctrl-C the
    trial stops and is recorded, but as preempted, so it is re-run under `retries.max_retries`."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into WorkerPreempted in this (main) thread. SLURM sends SIGTERM before it kills."""
    def preempt(signum, frame):
        raise WorkerPreempted("the worker got SIGTERM (scheduler preemption or cancellation)")

    signal.signal(signal.SIGTERM, preempt)


def failure_cause(exc: BaseException) -> str:
    """The cause (see the table above) of a trial that raised `exc`.

    Example:
        >>> failure_cause(MemoryError()), failure_cause(ValueError("bad"))
        ('oom', 'error')
    """
    if isinstance(exc, TrialDiverged):
        return DIVERGED
    if isinstance(exc, RankLost):  # a distributed trial's process died or hung: as if its node were preempted
        return PREEMPTED
    if is_out_of_memory(exc):
        return OOM
    return ERROR


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS/CPU allocation failures, whichever way torch reports them."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def plan_retry(trial: optuna.trial.FrozenTrial | optuna.Trial, cause: str, policy: RetryPolicy,
               budget) -> tuple[dict[str, Any] | None, str]:
    """Whether `trial`, failed by `cause`, runs again: (user attrs of the re-run or None, why).

    `budget` is the sweep's TrainBudget: the batch and accumulation a trial runs with unless its
    params set them.
    """
    attrs = trial.user_attrs
    attempt = attrs.get(ATTEMPT, 0) + (cause != INTERRUPTED)  # a user's stop is not the trial's fault
    retry = {RETRY_OF: trial.number, RETRY_CAUSE: cause, ATTEMPT: attempt, OVERRIDES: dict(attrs.get(OVERRIDES, {}))}
    if cause == INTERRUPTED:
        return retry, "queued again"
    if cause in (PREEMPTED, ERROR):
        if cause == ERROR and not policy.retry_errors:
            return None, "not retried (retries.retry_errors is off)"
        if attempt > policy.max_retries:
            return None, f"not retried again (retries.max_retries: {policy.max_retries})"
        return retry, f"retry {attempt} of {policy.max_retries} queued"
    if cause == OOM:
        if not policy.halve_batch_on_oom:
            return None, "not retried (retries.halve_batch_on_oom is off)"
        config = attrs.get(CONFIG, {})
        batch = int(config.get("batch_size", budget.batch_size))
        accumulation = int(config.get("gradient_accumulation_steps", budget.gradient_accumulation_steps))
        if batch <= 1:
            return None, "not retried: already at batch size 1"
        # Half the batch, twice the accumulation: the optimizer sees the same effective batch
        # (for an odd batch, one example less per step).
        retry[OVERRIDES].update(batch_size=batch // 2, gradient_accumulation_steps=accumulation * 2)
        return retry, f"retry queued with batch {batch // 2} × accumulation {accumulation * 2}"
    return None, "not retried: the same params would diverge again"


def enqueue_retry(study: optuna.Study, trial, retry: dict[str, Any]) -> None:
    """Queue the re-run `plan_retry` described, with the failed trial's searched params fixed."""
    frozen = study._storage.get_trial(trial._trial_id)  # a live Trial or a FrozenTrial: read the stored one
    params = dict(frozen.system_attrs.get("fixed_params") or {})
    params.update(frozen.params)  # a trial killed while sampling has fewer params than it was queued with
    study.enqueue_trial(params, user_attrs=retry, skip_if_exists=False)
