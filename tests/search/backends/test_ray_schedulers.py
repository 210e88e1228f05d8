"""The sweep's pruner on Ray (search/backends/ray_schedulers.py): every pruner with a `ray` capability
maps to the scheduler and numbers, in steps, that the table says; what cannot map is refused; and no
scheduler but PBT pauses a trial, checked on real Ray runs."""

from __future__ import annotations

import inspect
import math

import optuna
import pytest
from optuna.trial import TrialState

from search.backends import get_backend
from search.backends.ray_schedulers import (
    EVAL_EVERY,
    MAX_STEPS,
    RAY_NAMES,
    SCHEDULERS,
    TRANSLATIONS,
    ray_scheduler,
)
from search.components import PRUNERS, build_pruner
from search.store.storage import open_storage
from search.sweep import load_sweep
from spaces import ConfigError

ray = pytest.importorskip("ray")

BUDGET = {"max_steps": 60, "eval_every": 10}  # numbers that make rungs and brackets tell apart
RAY_PRUNERS = PRUNERS.having("ray")


def _sweep(write_sweep, pruner: str, args: dict | None = None, **changes):
    return load_sweep(write_sweep(backend="ray", pruner={"name": pruner, "args": args or {}}, n_trials=4,
                                  budget=BUDGET, **changes))


def _scheduler(sweep):
    return ray_scheduler(sweep.spec, sweep.spec.budget, "eval_loss", "min", sweep.space, source=sweep.source)


def _described(scheduler) -> dict | None:
    """What a scheduler will do, read off the Ray object itself; every time in its `time_attr` units."""
    if scheduler is None:
        return None
    name = type(scheduler).__name__
    if name == "AsyncHyperBandScheduler":
        return {"class": name, "time_attr": scheduler._time_attr, "max_t": scheduler._max_t,
                "reduction_factor": scheduler._reduction_factor,
                # Each bracket's rung milestones, lowest first (Ray keeps them highest first). A bracket's
                # lowest rung is its grace period; bracket 0's is the scheduler's.
                "rungs": [[milestone for milestone, _ in reversed(b._rungs)] for b in scheduler._brackets]}
    if name == "MedianStoppingRule":
        return {"class": name, "time_attr": scheduler._time_attr, "grace_period": scheduler._grace_period,
                "min_samples_required": scheduler._min_samples_required, "hard_stop": scheduler._hard_stop,
                "min_time_slice": scheduler._min_time_slice}
    if name == "PopulationBasedTraining":
        return {"class": name, "time_attr": scheduler._time_attr,
                "perturbation_interval": scheduler._perturbation_interval,
                "mutations": sorted(scheduler._hyperparam_mutations)}
    raise AssertionError(f"describe {name} here")


ASHA, MEDIAN = "AsyncHyperBandScheduler", "MedianStoppingRule"
NEVER_YIELDS = {"hard_stop": True, "min_time_slice": math.inf}
# Each pruner with its defaults, on a 60-step budget evaluated every 10 steps. A pruner newly given a
# `ray` capability fails here until its row is added.
DEFAULTS = {
    "none": None,
    "median": {"class": MEDIAN, "time_attr": "step", "grace_period": 0, "min_samples_required": 5, **NEVER_YIELDS},
    # Optuna's reduction factor 4, first rung at eval_every: rungs at 10 and 40 steps, stopped at 60.
    "successive_halving": {"class": ASHA, "time_attr": "step", "max_t": 60, "reduction_factor": 4,
                           "rungs": [[10, 40]]},
    # Optuna's reduction factor 3: floor(log_3(60 / 10)) + 1 = 2 brackets, asynchronous.
    "hyperband": {"class": ASHA, "time_attr": "step", "max_t": 60, "reduction_factor": 3,
                  "rungs": [[10, 30], [30]]},
    # lora-quick searches learning_rate and lora_dropout; PBT mutates those by default.
    "pbt": {"class": "PopulationBasedTraining", "time_attr": "step", "perturbation_interval": 10,
            "mutations": ["learning_rate", "lora_dropout"]},
}


@pytest.mark.parametrize("name", RAY_PRUNERS)
def test_every_ray_pruner_maps_with_its_defaults_to_this_scheduler(name, write_sweep):
    assert name in DEFAULTS, f"add what the {name} pruner maps to on Ray to DEFAULTS"
    assert _described(_scheduler(_sweep(write_sweep, name))) == DEFAULTS[name]


@pytest.mark.parametrize("name", RAY_PRUNERS)
def test_the_translation_table_covers_every_optuna_argument_with_optunas_defaults(name):
    kind = PRUNERS.capabilities(name)["ray"]
    assert kind in TRANSLATIONS and kind in RAY_NAMES and kind in SCHEDULERS
    if not PRUNERS.supports(name, "optuna"):  # Ray only (pbt): Ray's names alone
        assert TRANSLATIONS[kind] == {}
        return
    parameters = inspect.signature(PRUNERS.get(name)).parameters
    # Every Optuna argument is translated or refused: a new one in Optuna fails here.
    assert set(TRANSLATIONS[kind]) == set(parameters)
    budget_defaults = {"min_resource": EVAL_EVERY, "max_resource": MAX_STEPS}
    for arg, translation in TRANSLATIONS[kind].items():
        if translation.default in (EVAL_EVERY, MAX_STEPS):  # the budget's, as the Optuna backend gives them
            assert budget_defaults[arg] == translation.default
            assert arg.split("_")[0] in PRUNERS.capabilities(name)["budget_resources"]
        else:
            assert translation.default == parameters[arg].default, arg


# (pruner, args, what the Ray scheduler does): Optuna's names, then the Ray names sweep files already use.
TRANSLATED = [
    # grace_period = min_resource * reduction_factor ** min_early_stopping_rate = 5 * 2
    ("sha", {"min_resource": 5, "reduction_factor": 2, "min_early_stopping_rate": 1},
     {"max_t": 60, "reduction_factor": 2, "rungs": [[10, 20, 40]]}),
    # "auto": Optuna's estimate from a trial of 60 steps, max(60 // 100, 1) = 1
    ("successive_halving", {"min_resource": "auto"}, {"max_t": 60, "reduction_factor": 4, "rungs": [[1, 4, 16]]}),
    # floor(log_3(27 / 1)) + 1 = 4 brackets; the rungs go on to the trials' 60 steps, as Optuna's do
    ("hyperband", {"min_resource": 1, "max_resource": 27, "reduction_factor": 3},
     {"max_t": 60, "reduction_factor": 3, "rungs": [[1, 3, 9, 27], [3, 9, 27], [9, 27], [27]]}),
    ("hyperband", {"max_resource": "auto", "reduction_factor": 2},  # log_2(60 / 10): 3 brackets
     {"max_t": 60, "reduction_factor": 2, "rungs": [[10, 20, 40], [20, 40], [40]]}),
    # min_samples_required = max(n_startup_trials, n_min_trials, 1); interval_steps <= eval_every means the same
    ("median", {"n_warmup_steps": 20, "n_startup_trials": 3, "n_min_trials": 4, "interval_steps": 10},
     {"grace_period": 20, "min_samples_required": 4, **NEVER_YIELDS}),
    ("median", {"n_startup_trials": 0}, {"grace_period": 0, "min_samples_required": 1, **NEVER_YIELDS}),
    # Ray's names
    ("asha", {"grace_period": 20, "max_t": 60, "reduction_factor": 3, "brackets": 2},
     {"max_t": 60, "reduction_factor": 3, "rungs": [[20, 60], [60]]}),
    ("hyperband", {"grace_period": 10, "reduction_factor": 2},  # brackets as Optuna would count them: 3
     {"max_t": 60, "reduction_factor": 2, "rungs": [[10, 20, 40], [20, 40], [40]]}),
    ("median", {"grace_period": 20, "min_samples_required": 2},
     {"grace_period": 20, "min_samples_required": 2, **NEVER_YIELDS}),
    ("pbt", {"perturbation_interval": 20, "mutations": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
     {"perturbation_interval": 20, "mutations": ["learning_rate"]}),
]


@pytest.mark.parametrize(("name", "args", "expected"), TRANSLATED)
def test_pruner_arguments_translate_to_these_scheduler_numbers_in_steps(name, args, expected, write_sweep):
    described = _described(_scheduler(_sweep(write_sweep, name, args)))
    assert described["time_attr"] == "step"
    assert {key: described[key] for key in expected} == expected


@pytest.mark.parametrize(("name", "args"), [
    ("successive_halving", {}),
    ("sha", {"min_resource": 5, "reduction_factor": 2, "min_early_stopping_rate": 1}),
    ("hyperband", {}),
    ("hyperband", {"min_resource": 1, "max_resource": 27, "reduction_factor": 3}),
    ("hyperband", {"min_resource": 2, "max_resource": 54, "reduction_factor": 3}),
])
def test_rungs_and_brackets_are_those_of_the_optuna_pruner_of_the_same_file(name, args, write_sweep):
    sweep = _sweep(write_sweep, name, args)
    budget = sweep.spec.budget
    pruner = build_pruner(sweep.spec.pruner, budget=budget)  # what the optuna backend builds from the same file
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        pruner._try_initialization(optuna.create_study())  # counts its brackets (max_resource is given)
        halvings = pruner._pruners
    else:
        halvings = [pruner]

    def promotion_steps(sha) -> list[int]:  # optuna/pruners/_successive_halving.py: rung_promotion_step
        steps, rung = [], 0
        while (step := sha._min_resource * sha._reduction_factor ** (sha._min_early_stopping_rate + rung)) \
                <= budget.max_steps:
            steps.append(step)
            rung += 1
        return steps

    assert _described(_scheduler(sweep))["rungs"] == [promotion_steps(sha) for sha in halvings]


@pytest.mark.parametrize(("name", "args", "key", "words"), [
    ("sha", {"bootstrap_count": 2}, "pruner.args.bootstrap_count", "no Ray equivalent"),
    ("hyperband", {"bootstrap_count": 1, "max_resource": 60}, "pruner.args.bootstrap_count", "no Ray equivalent"),
    ("median", {"interval_steps": 20}, "pruner.args.interval_steps", "every evaluation"),
    ("hyperband", {"min_resource": "auto"}, "pruner.args.min_resource", "whole number"),
    ("sha", {"min_resource": 100}, "pruner.args.min_resource", "beyond the trials' 60 steps"),
    ("sha", {"min_resource": 20, "min_early_stopping_rate": 1}, "pruner.args.min_resource", "first rung (80 steps)"),
    ("asha", {"max_t": 30}, "pruner.args.max_t", "short of its budget"),
    ("median", {"n_warmup_steps": -1}, "pruner.args.n_warmup_steps", "whole number >= 0"),
    # both spellings of one thing in one file
    ("median", {"n_warmup_steps": 10, "grace_period": 10}, "pruner.args", "mixes Optuna's argument names"),
    ("sha", {"min_resource": 10, "grace_period": 10}, "pruner.args", "mixes Optuna's argument names"),
    ("hyperband", {"max_resource": 30, "max_t": 60}, "pruner.args", "mixes Optuna's argument names"),
    # unknown names, and a pruner with no Ray scheduler
    ("sha", {"patience": 3}, "pruner.args", "patience not supported by the sha pruner on Ray"),
    ("none", {"n_startup_trials": 3}, "pruner.args", "n_startup_trials not supported"),
    ("pbt", {"min_resource": 10}, "pruner.args", "min_resource not supported"),
    ("percentile", {"percentile": 25.0}, "pruner.name", "no Ray equivalent"),
])
def test_arguments_ray_cannot_honour_are_refused_naming_the_key(name, args, key, words, write_sweep):
    sweep = _sweep(write_sweep, name, args)
    with pytest.raises(ConfigError) as caught:
        _scheduler(sweep)
    assert caught.value.key == key
    assert words in str(caught.value)
    assert str(caught.value).startswith(str(sweep.source))  # the file it came from
    if key == "pruner.args" and "not supported" in words:  # the names it does take
        kind = PRUNERS.capabilities(name)["ray"]
        assert caught.value.allowed == sorted(set(TRANSLATIONS[kind]) | set(RAY_NAMES[kind]))


def test_the_ray_backend_refuses_them_before_the_study_or_ray_starts(write_sweep):
    sweep = _sweep(write_sweep, "hyperband", {"bootstrap_count": 2, "max_resource": 60})
    was_running = ray.is_initialized()
    with pytest.raises(ConfigError, match="bootstrap_count has no Ray equivalent"):
        get_backend("ray")(sweep).run()
    assert ray.is_initialized() == was_running
    assert not sweep.output_dir.exists()  # nothing created: no study, no Ray results folder


# ------------------------------------------------------------------------------------- a real Ray run


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in RAY_PRUNERS if PRUNERS.capabilities(n)["ray"] not in ("none", "pbt")])
def test_no_scheduler_but_pbt_pauses_a_trial_on_a_real_ray_run(name, write_sweep, ray_module):
    # One CPU, two trials allowed at once: one runs while the other waits (PENDING). The default median
    # (5 startup trials, 4 in the sweep) never has enough trials to compare, which is when Ray's rule
    # paused a trial for the waiting one: its `min_time_slice` is compared with the step since the
    # trial's last pause, which starts at -inf, so any finite slice pauses (median_stopping_rule.py,
    # _on_insufficient_samples). Measured before the fix: 4 of 4 trials paused, and resumed from their
    # checkpoint. Ray's synchronous HyperBandScheduler pauses at every rung; hyperband maps to ASHA.
    sweep = load_sweep(write_sweep(backend="ray", pruner=name, n_trials=4,
                                   ray={"num_cpus": 1, "max_concurrent_trials": 2}))
    get_backend("ray")(sweep).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    trials = study.get_trials()
    assert TrialState.FAIL not in [t.state for t in trials], [t.user_attrs.get("fail_reason") for t in trials]
    assert len(trials) == 4
    for t in trials:
        history = t.user_attrs["eval_history"]
        # A trial Ray restarts from a checkpoint reports where it resumed (StudyRecorder.result).
        assert [h for h in history if "resumed_from" in h] == [], history
        steps = [h["step"] for h in history]
        assert steps == list(range(sweep.spec.budget.eval_every, steps[-1] + 1, sweep.spec.budget.eval_every))
