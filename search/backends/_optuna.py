"""The Optuna backend: trials run one after another in this process, on a study in any Optuna storage.

Flow of `OptunaBackend.run()`:
1. set the objective up once (tokenizer, base model, data) — bad data or model fail here, before
   the study is touched;
2. create or load the study (`load_if_exists`), check its direction matches;
3. recover: trials a dead process left RUNNING become FAIL, interrupted trials are queued again;
4. `study.optimize` until the study holds `n_trials` finished trials (or `timeout`), catching every
   trial exception so one bad trial never ends the sweep.
"""

from __future__ import annotations

import math
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from objectives import TrialDiverged

from ..pruners import build_pruner
from ..samplers import build_sampler
from ..tracking import make_tracker
from ..study import WORKER, prepare_storage, record_sweep
from ._base import Backend, SweepOutcome


class OptunaBackend(Backend):
    """Run a sweep with Optuna in this process.

    Example:
        >>> from search.spec import load_sweep
        >>> outcome = OptunaBackend(load_sweep("demo", ["n_trials=2"])).run()  # doctest: +SKIP
    """

    name = "optuna"

    def run(self) -> SweepOutcome:
        sweep, spec = self.sweep, self.sweep.spec
        objective = sweep.make_objective()
        self.listener("setup", {"model": spec.model.name_or_path})
        objective.setup()

        sweep.output_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = make_tracker(spec.tracking, sweep.output_dir,
                                    say=lambda text: self.listener("note", {"text": text}))
        storage = prepare_storage(sweep.storage_url)
        study = self._open_study(storage)
        outcome, remaining = self.begin(study, sweep.storage_url)
        if remaining == 0:
            return self._finish(study, outcome)

        def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            outcome.ran += 1
            self.listener("trial_end", {"study": study, "trial": trial})

        try:
            study.optimize(
                lambda trial: self._run_trial(trial, objective),
                n_trials=remaining,
                timeout=spec.timeout,
                catch=(Exception,),  # a failing trial is recorded as FAIL; the sweep goes on
                callbacks=[on_trial_end],
            )
        except KeyboardInterrupt:
            outcome.interrupted = True
            raise
        finally:
            self._finish(study, outcome)
        self.tracker.sweep_end(study, sweep.output_dir)
        return outcome

    def _open_study(self, storage: str) -> optuna.Study:
        sweep, spec = self.sweep, self.sweep.spec
        # Seed offset by the trials already there: a resumed sweep must not replay the same random draws.
        existing = 0
        if sweep.study_name in optuna.study.get_all_study_names(storage=storage):
            existing = len(optuna.load_study(study_name=sweep.study_name, storage=storage).trials)
        sampler = build_sampler(spec.sampler, sweep.space, seed=spec.seed + existing, source=sweep.source)
        pruner = build_pruner(spec.pruner, budget=spec.budget, source=sweep.source)
        study = optuna.create_study(
            storage=storage, study_name=sweep.study_name, direction=sweep.direction,
            sampler=sampler, pruner=pruner, load_if_exists=True,
        )
        if study.direction.name.lower() != sweep.direction:
            from spaces import ConfigError

            raise ConfigError(
                f"study '{sweep.study_name}' already exists with direction {study.direction.name.lower()}",
                source=sweep.source, key="metric.direction", value=sweep.direction,
                hint="Fix: use another study_name, or the same direction as before.",
            )
        record_sweep(study, sweep)
        return study

    def _run_trial(self, trial: optuna.Trial, objective) -> float:
        sweep = self.sweep
        metric = sweep.spec.metric.name
        trial.set_user_attr("worker", WORKER)
        params = sweep.space.sample(trial)
        trial.set_user_attr("config", params)
        self.listener("trial_start", {"trial": trial, "params": params})
        history: list[dict[str, Any]] = []
        tracked = self.tracker.trial(sweep.study_name, trial.number, params)

        def report(step: int, metrics: dict[str, float]) -> bool:
            history.append({"step": step, **metrics})
            trial.set_user_attr("eval_history", history)
            tracked.log(step, metrics)
            trial.report(metrics[metric], step)
            self.listener("trial_report", {"trial": trial, "step": step, "metrics": metrics})
            return trial.should_prune()

        started = time.monotonic()
        last = lambda: {k: v for k, v in (history[-1] if history else {}).items() if k != "step"}  # noqa: E731
        try:
            metrics = objective.run_trial(params, report, on_log=tracked.log)
        except optuna.TrialPruned:
            trial.set_user_attr("duration_s", time.monotonic() - started)
            tracked.finish("pruned", last())
            raise
        except KeyboardInterrupt:
            reason = "interrupted: stopped by the user (Ctrl-C)"
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("interrupted", True)
            tracked.finish("failed", last(), reason)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", _reason(exc))
            trial.set_user_attr("duration_s", time.monotonic() - started)
            tracked.finish("failed", last(), _reason(exc))
            raise
        trial.set_user_attr("duration_s", time.monotonic() - started)
        trial.set_user_attr("metrics", metrics)
        value = metrics[metric]
        if not math.isfinite(value):
            reason = f"TrialDiverged: final {metric} is {value}"
            trial.set_user_attr("fail_reason", reason)
            tracked.finish("failed", metrics, reason)
            raise TrialDiverged(reason)
        tracked.finish("complete", metrics)
        return value

    def _finish(self, study: optuna.Study, outcome: SweepOutcome) -> SweepOutcome:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        outcome.counts = {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}
        return outcome


def _reason(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
