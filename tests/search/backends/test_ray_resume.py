"""Ray trials stopped mid-training and resumed -- paused by the scheduler, or retried after a failure
-- end with the eval history of the same trial never interrupted (objectives/engine/checkpoint.py):
relative difference below 1e-5 at every evaluation, fp32 on CPU."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.backends import get_backend
from search.store.storage import open_storage
from search.sweep import load_sweep

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402

TOLERANCE = 1e-5
BUDGET = {"max_steps": 8, "eval_every": 2}


class PausesEachTrialOnce(FIFOScheduler):
    """A real Ray scheduler that pauses every trial once, at its report of step `at`: the trial's actor
    stops and the trial later goes on from the checkpoint it reported, as under PBT."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.paused = at, set()

    def on_trial_result(self, tune_controller, trial, result):
        if result.get("step") == self.at and trial.trial_id not in self.paused:
            self.paused.add(trial.trial_id)
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE


def _uninterrupted(sweep, config) -> dict[int, float]:
    """The eval losses of `config` trained in one go, in this process."""
    objective = sweep.make_objective()
    seen = {}
    objective.run_trial(config, lambda step, metrics: seen.__setitem__(step, metrics["eval_loss"]) or False)
    return seen


def _assert_same_curve(trial, sweep) -> None:
    history = trial.user_attrs["eval_history"]
    want = _uninterrupted(sweep, trial.user_attrs["config"])
    assert [h["step"] for h in history] == sorted(want)
    for entry in history:
        assert entry["eval_loss"] == pytest.approx(want[entry["step"]], rel=TOLERANCE), entry


def test_a_paused_trial_resumes_exactly_where_it_stopped(write_sweep, ray_module):
    ray_module.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    sweep = load_sweep(write_sweep(backend="ray", n_trials=2, budget=BUDGET, ray={"max_concurrent_trials": 1}))
    scheduler = PausesEachTrialOnce(at=4)
    get_backend("ray")(sweep, scheduler=scheduler).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert len(scheduler.paused) == 2
    for trial in trials:
        resumed = [h["step"] for h in trial.user_attrs["eval_history"] if h.get("resumed_from") == 4]
        assert resumed == [6, 8], trial.user_attrs["eval_history"]  # went on from its step-4 checkpoint
        _assert_same_curve(trial, sweep)


def test_a_trial_retried_after_a_failure_resumes_exactly(write_sweep, ray_module, tmp_path, monkeypatch):
    marker = tmp_path / "failed-once"
    monkeypatch.setenv("FTSWEEP_FAIL_MARKER", str(marker))  # for the uninterrupted run here, after the failure
    ray_module.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                    runtime_env={"env_vars": {"FTSWEEP_FAIL_MARKER": str(marker)}})
    sweep = load_sweep(write_sweep(backend="ray", n_trials=1, budget=BUDGET,
                                   objective="tests.search.ray_objectives:FailsOnceObjective",
                                   ray={"max_failures": 1}))
    get_backend("ray")(sweep).run()
    [trial] = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url)).get_trials()
    assert marker.read_text() == "failed at step 2\n" and trial.state == TrialState.COMPLETE
    assert [h.get("resumed_from", 0) for h in trial.user_attrs["eval_history"]] == [0, 2, 2, 2]
    # The uninterrupted reference runs the plain objective: FailsOnce only raises once a marker is absent.
    _assert_same_curve(trial, sweep)
