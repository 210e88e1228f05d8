"""The contract every backend honours, run against every registered backend (a new backend gets the
whole suite by being registered): a sweep runs, an aggressive scheduler prunes, every trial lands in
the study store with its params and curve, conditional params are honoured, launching again resumes."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.backends import available_backends, get_backend
from search.spec import load_sweep
from search.study import open_storage

pytestmark = pytest.mark.integration

CONDITIONAL = {"params": {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
    "lora_dropout": {"type": "float", "low": 0.0, "high": 0.1, "when": {"lr_scheduler_type": "cosine"}},
    "lora_r": {"type": "categorical", "choices": [4, 8]},
    "lora_alpha": {"type": "derived", "from": "lora_r", "times": 2, "as": "int"},
}}


@pytest.fixture(scope="module", params=available_backends())
def backend(request):
    if request.param == "ray":
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one Ray for the whole module
        yield "ray"
        ray.shutdown()
    else:
        yield request.param


def _run(write_sweep, backend, listener=None, **changes) -> optuna.Study:
    sweep = load_sweep(write_sweep(backend=backend, **changes))
    get_backend(backend)(sweep, listener=listener).run()
    return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def test_runs_and_records_every_trial(write_sweep, backend):
    events = []
    study = _run(write_sweep, backend, n_trials=3, listener=lambda event, details: events.append((event, details)))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # The progress display hears of every report and every end, whichever backend ran the trial.
    ended = [d["trial"] for e, d in events if e == "trial_end"]
    assert sorted((t.number, t.state, t.value) for t in ended) == [(t.number, t.state, t.value) for t in trials]
    reports = sorted((d["trial"].number, d["step"]) for e, d in events if e == "trial_report")
    assert reports == [(t.number, step) for t in trials for step in (2, 4)]
    for t in trials:
        assert sorted(t.intermediate_values) == [2, 4]
        assert t.value == pytest.approx(t.user_attrs["metrics"]["eval_loss"])
        assert set(t.params) <= set(t.user_attrs["config"])
        assert [h["step"] for h in t.user_attrs["eval_history"]] == [2, 4]
    assert study.user_attrs["sweep"]["backend"] == backend


def test_aggressive_scheduler_prunes(write_sweep, backend):
    study = _run(write_sweep, backend, n_trials=8, pruner={"name": "sha", "args": {"reduction_factor": 4}},
                 budget={"max_steps": 8, "eval_every": 2})
    states = [t.state for t in study.get_trials()]
    assert len(states) == 8 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    # No FAIL: every trial after a pruned one found the shared base model without adapter layers
    # (run_trial refuses a base with leftovers), including in Ray's reused actors.
    assert TrialState.FAIL not in states, [t.user_attrs.get("fail_reason") for t in study.get_trials()]
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert max(t.intermediate_values) < 8


def test_conditional_and_derived_params_are_honoured(write_sweep, backend):
    study = _run(write_sweep, backend, n_trials=6, space=CONDITIONAL)
    for t in study.get_trials():
        config = t.user_attrs["config"]
        assert ("lora_dropout" in config) == (config["lr_scheduler_type"] == "cosine")
        assert config["lora_alpha"] == 2 * config["lora_r"]
    assert {t.user_attrs["config"]["lr_scheduler_type"] for t in study.get_trials()} == {"linear", "cosine"}


def test_launching_again_resumes(write_sweep, backend):
    first = _run(write_sweep, backend, n_trials=2)
    before = {t.number: t.value for t in first.get_trials()}
    again = _run(write_sweep, backend, n_trials=3)
    trials = again.get_trials()
    assert len(trials) == 3
    assert {t.number: t.value for t in trials if t.number in before} == before

