"""The pack loop: `pack.slots` trials at once on one worker's base model (objectives/engine/packed.py).

Trials are asked of the study together (the sampler's handling of running trials applies, e.g. TPE's constant
liar), each reports its own evaluations to the pruner, each is settled (search/trials/ending.py) and told when it
ends, and its slot is refilled at once with a newly asked trial, until the queue (n_trials) is empty or the
deadline passes. A pack out of memory has its trials queued again, unchanged, and the work goes on in packs of
half the slots, down to one.

A pack is an optimize loop of its own, so this module (with search/store) is where Optuna's private pieces are
touched: the study's stop flag and optimize-loop marker, and each trial's heartbeat thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread

from objectives.engine.packed import run_packed

from ..store.queue import NoTrialLeft, QueueStudy
from ..store.record import ATTEMPT, INTERRUPTED_CAUSE, OOM, OVERRIDES, PACK, RETRY_CAUSE, RETRY_OF, TrialRecord
from ..store.retries import enqueue_retry, failure_cause
from ..store.sweep_budget import stop_rule
from .ending import Ending, decide, exception_text, failed, from_exception

# on_trial_end(study, frozen trial): the backend's bookkeeping once a trial is told
TrialEnd = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


class TrialHost(Protocol):
    """What the pack loop needs of the backend that runs it (the Optuna backend's per-trial steps)."""

    sweep: Any

    def start_trial(self, trial: optuna.Trial) -> tuple[dict[str, Any], TrialRecord, Any]: ...
    def end_paused(self, trial: optuna.Trial) -> None: ...
    def trial_dir(self, number: int): ...
    def replay(self, trial, params, trial_dir, record, tracked) -> tuple[Any, list[dict[str, Any]], float]: ...
    def reporter(self, trial, record, tracked, history): ...
    def settle_trial(self, trial, ending: Ending, record, tracked, duration_s: float | None) -> None: ...


class PackOutOfMemory(Exception):
    """A pack ran out of memory; its trials are queued again for a pack of half the slots."""


@dataclass
class _Running:
    """One trial of the pack, by its index in the pack (the order trials started)."""

    trial: optuna.Trial
    record: TrialRecord
    tracked: Any
    params: dict[str, Any]
    heartbeat: Any
    folder: Any
    resume: Any
    report: Callable[[int, dict[str, float]], Any] | None = None
    told: bool = False


def run_packs(host: TrialHost, study: optuna.Study, objective, deadline: float | None, on_trial_end: TrialEnd) -> None:
    """Run the study's trials in packs of `pack.slots` until none is left, halving the pack on out-of-memory.

    Raises NoTrialLeft when the queue was empty from the start.
    """
    slots = host.sweep.spec.pack.slots
    while True:
        try:
            return PackLoop(host, study, objective, deadline, on_trial_end, slots).run()
        except PackOutOfMemory:
            slots = max(1, slots // 2)


class PackLoop:
    """One pack of `slots` trials, refilled as its trials end (see the module docstring)."""

    def __init__(self, host: TrialHost, study: optuna.Study, objective, deadline: float | None,
                 on_trial_end: TrialEnd, slots: int) -> None:
        self.host, self.study, self.objective, self.deadline = host, study, objective, deadline
        self.on_trial_end, self.slots = on_trial_end, slots
        spec = host.sweep.spec
        self.stop_when = stop_rule(spec.budget.sweep, spec.resources.devices_per_trial)
        self.running: list[_Running] = []

    def run(self) -> None:
        study, sweep = self.study, self.host.sweep
        # Samplers may call `study.stop()` (the grid sampler once its grid is used up), which Optuna allows only
        # inside `study.optimize`; here it only stops the asking.
        study._stop_flag, study._thread_local.in_optimize_loop = False, True
        try:
            first = [entry for entry in (self.ask() for _ in range(self.slots)) if entry is not None]
            if not first:
                raise NoTrialLeft
            run_packed(self.objective, [e.params for e in first], report=self.report, next_params=self.next_params,
                       on_end=self.ended, on_log=lambda index, step, logs: self.running[index].tracked.log(step, logs),
                       trial_dir=lambda index: self.running[index].folder,
                       resume_from=lambda index: self.running[index].resume,
                       checkpoint_interval_s=sweep.spec.retries.checkpoint_interval_s)
        except NoTrialLeft:
            raise
        except BaseException as exc:  # the pack's running trials end with it: recorded, each re-run per the policy
            self._end_all(exc)
            raise
        finally:
            study._thread_local.in_optimize_loop = False

    def _may_ask(self) -> bool:
        if (self.deadline is not None and time.time() >= self.deadline) or self.study._stop_flag:
            return False
        return isinstance(self.study, QueueStudy) or self.stop_when is None or not self.stop_when(self.study)

    def _ask_trial(self) -> optuna.Trial | None:
        """A new trial of the study, after ending any paused trial the store hands out to be ended."""
        study = self.study
        waits = getattr(study, "waits_for_others", False)
        if isinstance(study, QueueStudy):
            study.waits_for_others = False  # waiting here would wait on this pack's own trials
        try:
            trial = study.ask()
            while trial._trial_id in getattr(study, "ending", ()):  # a paused trial to end, not to run
                try:
                    self.host.end_paused(trial)
                except optuna.TrialPruned:
                    self.on_trial_end(study, study.tell(trial, state=optuna.trial.TrialState.PRUNED))
                trial = study.ask()
            return trial
        except NoTrialLeft:
            return None
        finally:
            if isinstance(study, QueueStudy):
                study.waits_for_others = waits

    def ask(self) -> _Running | None:
        trial = self._ask_trial() if self._may_ask() else None
        if trial is None:
            return None
        host = self.host
        params, record, tracked = host.start_trial(trial)
        # Each trial's heartbeat, as study.optimize keeps one for its trial: workers elsewhere tell a live
        # pack's trials from those of a dead process.
        heartbeat = get_heartbeat_thread(trial._trial_id, self.study._storage)
        heartbeat.start()
        folder = host.trial_dir(trial.number)
        resume_from, history = host.replay(trial, params, folder, record, tracked)[:2]
        entry = _Running(trial, record, tracked, params, heartbeat, folder, resume_from)
        entry.report = host.reporter(trial, record, tracked, history)
        self.running.append(entry)
        return entry

    def next_params(self) -> dict[str, Any] | None:
        entry = self.ask()
        return entry.params if entry is not None else None

    def report(self, index: int, step: int, metrics: dict[str, float]):
        return self.running[index].report(step, metrics)

    def ended(self, index: int, result: dict[str, Any]) -> None:
        entry, sweep = self.running[index], self.host.sweep
        entry.told = True
        entry.heartbeat.join()
        entry.record.set(PACK, {"slot": result["slot"], "slots": self.slots})
        metrics = {k: v for k, v in result.items() if k not in ("pruned", "paused", "diverged", "slot", "duration_s")}
        metrics["steps"] = float(metrics["steps"])
        ending = decide(sweep.metric_names, metrics, diverged=result["diverged"] or None,
                        paused_at=int(result["steps"]) if result["paused"] else None, stopped=result["pruned"])
        self.host.settle_trial(entry.trial, ending, entry.record, entry.tracked, result["duration_s"])
        values = ending.values if sweep.multi_objective else (ending.values or [None])[0]
        # A paused one's continuation is queued by on_trial_end.
        self.on_trial_end(self.study, self.study.tell(entry.trial, values, state=ending.optuna_state))

    def _end_all(self, exc: BaseException) -> None:
        """Record every trial the pack's failure cut short; on out-of-memory (with `retries.halve_batch_on_oom`)
        queue each again unchanged and raise PackOutOfMemory, for a pack of half the slots."""
        cause = failure_cause(exc) if isinstance(exc, Exception) else INTERRUPTED_CAUSE
        halve = cause == OOM and self.slots > 1 and self.host.sweep.spec.retries.halve_batch_on_oom
        for entry in self.running:
            if entry.told:
                continue
            trial, record = entry.trial, entry.record
            entry.heartbeat.join()
            record.ended(duration_s=0.0)
            record.set(PACK, {"slot": None, "slots": self.slots})
            if halve:  # the same trial again, in a smaller pack: its own batch stays as it is
                ending = failed(OOM, exception_text(exc))
                record.failed(OOM, ending.reason, retry=f"queued again for a pack of {max(1, self.slots // 2)} slots",
                              requeued=True)
                enqueue_retry(self.study, trial, {RETRY_OF: trial.number, RETRY_CAUSE: OOM,
                                                  ATTEMPT: trial.user_attrs.get(ATTEMPT, 0), OVERRIDES: {}})
                entry.tracked.finish("failed", {}, ending.reason)
            else:
                self.host.settle_trial(trial, from_exception(exc, {}), record, entry.tracked, None)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if halve:
            raise PackOutOfMemory from exc
