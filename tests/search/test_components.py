"""Contract suites for the registries a sweep file names (search/components): every sampler and every
pruner entry is built from its name, as a sweep builds it, and drives a real Optuna study over a real
preset space. A new entry gets the whole suite by being registered."""

from __future__ import annotations

import importlib.util
import math
import re

import optuna
import pytest

from objectives import TrainBudget
from search.components import BACKENDS, PRUNERS, SAMPLERS, build_pruner, build_sampler, check_sampler, prunes
from search.settings import ComponentSpec
from spaces import ConfigError, get_preset, resolve_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Arguments a pruner cannot do without (everything else has a default).
REQUIRED_ARGS = {"percentile": {"percentile": 50.0}, "patient": {"patience": 1, "wrapped": "median"},
                 "threshold": {"upper": 1.0}}
BUDGET = TrainBudget(max_steps=40, eval_every=10)
# Every param fixed, categorical or stepped, so the grid sampler takes it too.
GRID_SPACE = resolve_space({"params": {"learning_rate": {"type": "categorical", "choices": [1e-4, 1e-3, 1e-2]},
                                       "lora_r": {"type": "categorical", "choices": [4, 8]}}})


def _curve(params: dict) -> list[float]:
    """A learning curve that depends on the params: a smaller loss for a learning rate near 1e-2."""
    gap = abs(math.log10(params["learning_rate"]) + 2)
    return [gap + 1.0 / step for step in range(1, 5)]


def _space_for(name: str):
    return GRID_SPACE if SAMPLERS.supports(name, "grid") else get_preset("lora")


def _installed_or_refused(name: str) -> None:
    """Skip a sampler whose optional package is missing here, after checking the sweep is refused with the fix."""
    needs = SAMPLERS.capabilities(name).get("needs")
    if needs and importlib.util.find_spec(needs[0]) is None:
        with pytest.raises(ConfigError, match=f"needs the '{needs[0]}' package.*{re.escape(needs[1])}"):
            check_sampler(ComponentSpec(name=name), _space_for(name))
        pytest.skip(f"{needs[0]} is not installed here")


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_samples_a_preset_space_on_a_real_study(name):
    _installed_or_refused(name)
    space = _space_for(name)
    check_sampler(ComponentSpec(name=name), space)
    study = optuna.create_study(sampler=build_sampler(ComponentSpec(name=name), space, seed=0))
    for _ in range(4):
        trial = study.ask()
        params = space.sample(trial)
        assert set(space.searched_names) <= set(params)
        study.tell(trial, _curve(params)[-1])
    assert len(study.trials) == 4 and study.best_value == min(t.value for t in study.trials)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_says_whether_it_drives_several_metrics(name):
    space = _space_for(name)
    if SAMPLERS.supports(name, "multi_objective"):
        _installed_or_refused(name)
        check_sampler(ComponentSpec(name=name), space, n_objectives=2)
        study = optuna.create_study(directions=["minimize", "minimize"],
                                    sampler=build_sampler(ComponentSpec(name=name), space, seed=0))
        trial = study.ask()
        params = space.sample(trial)
        study.tell(trial, [_curve(params)[-1], params["lora_r"]])
        assert len(study.best_trials) == 1
    else:
        with pytest.raises(ConfigError, match="optimizes one metric"):
            check_sampler(ComponentSpec(name=name), space, n_objectives=2)


@pytest.mark.parametrize("name", PRUNERS.having("optuna"))
def test_every_optuna_pruner_decides_on_reported_steps(name):
    pruner = build_pruner(ComponentSpec(name=name, args=REQUIRED_ARGS.get(name, {})), budget=BUDGET)
    assert isinstance(pruner, optuna.pruners.BasePruner)
    study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    decisions = []
    for lr in (1e-2, 1e-2, 1e-2, 1e-4, 1e-5):
        trial = study.ask()
        for step, value in enumerate(_curve({"learning_rate": lr}), start=1):
            trial.report(value, step * BUDGET.eval_every)
            if trial.should_prune():
                decisions.append(True)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            decisions.append(False)
            study.tell(trial, _curve({"learning_rate": lr})[-1])
    assert len(decisions) == 5
    if not prunes(name):
        assert not any(decisions)


def test_pruners_with_budget_resources_take_them_from_the_trial_budget():
    for name in PRUNERS.having("budget_resources"):
        pruner = build_pruner(ComponentSpec(name=name), budget=BUDGET)
        assert pruner._min_resource == BUDGET.eval_every, name
    assert build_pruner(ComponentSpec(name="hyperband"), budget=BUDGET)._max_resource == BUDGET.max_steps


def test_aliases_and_unknown_names():
    assert type(build_pruner(ComponentSpec(name="asha"))).__name__ == "SuccessiveHalvingPruner"
    assert not prunes("nop") and prunes("median")
    with pytest.raises(ConfigError) as error:
        build_pruner(ComponentSpec(name="sometimes"))
    assert error.value.key == "pruner.name" and "hyperband" in str(error.value)
    with pytest.raises(ConfigError, match="ray backend only"):
        build_pruner(ComponentSpec(name="pbt"))


@pytest.mark.parametrize("name", PRUNERS.having("ray"))
def test_every_ray_pruner_maps_to_a_ray_scheduler(name, write_sweep):
    pytest.importorskip("ray")
    from search.backends.ray_schedulers import ray_scheduler
    from search.sweep import load_sweep

    sweep = load_sweep(write_sweep(backend="ray", pruner=name, n_trials=4))
    scheduler = ray_scheduler(sweep.spec, sweep.spec.budget, "eval_loss", "min", sweep.space)
    assert (scheduler is None) == (not prunes(name))


def test_backends_declare_what_they_take():
    assert set(BACKENDS.having("workers")) <= set(BACKENDS.names())
    for name in BACKENDS.names():
        assert BACKENDS.get(name).__name__.lower().startswith(name)
