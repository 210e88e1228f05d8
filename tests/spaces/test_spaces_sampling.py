"""Presets and conditional spaces sampled by real Optuna studies.

Every sampled config is checked against the space's *plain dict* form (``to_dict``), not the
param models, so a bug in the models' condition/derivation logic cannot hide itself.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FixedTrial
import pytest

from spaces import get_preset
from spaces import list_presets
from spaces import SearchSpace


# Optuna warns (instead of failing) on out-of-range values, non-divisible steps, etc.
pytestmark = pytest.mark.filterwarnings("error")
optuna.logging.set_verbosity(optuna.logging.WARNING)

N_TRIALS = 30

SAMPLERS = {
    "tpe": lambda: optuna.samplers.TPESampler(seed=0),
    "random": lambda: optuna.samplers.RandomSampler(seed=0),
}

# Declared out of dependency order on purpose; exercises conditions that can be false,
# a condition on a conditional param, list-valued conditions and both kinds of derived.
CONDITIONAL = {
    "name": "conditional",
    "params": {
        "lora_alpha": {"type": "derived", "from": "lora_r", "times": "lora_alpha_ratio",
                       "plus": 1, "as": "int"},
        "peft_method": {"type": "categorical", "choices": ["lora", "full"]},
        "lora_r": {"type": "int", "low": 3, "high": 64, "log": True,
                   "when": {"peft_method": "lora"}},
        "lora_alpha_ratio": {"type": "categorical", "choices": [0.5, 1, 2],
                             "when": {"peft_method": "lora"}},
        "rslora_scale": {"type": "float", "low": 0.5, "high": 2.0, "step": 0.25,
                         "when": {"use_rslora": True}},
        "use_rslora": {"type": "categorical", "choices": [True, False],
                       "when": {"peft_method": "lora"}},
        "full_lr": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True,
                    "when": {"peft_method": "full"}},
        "batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
        "small_batch": {"type": "fixed", "value": True, "when": {"batch_size": [8, 16]}},
        "half_batch": {"type": "derived", "from": "batch_size", "times": 0.5},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
}


def _accepts(accepted: Any, value: Any) -> bool:
    return any(value == a for a in (accepted if isinstance(accepted, list) else [accepted]))


def check_config(space: dict[str, Any], config: dict[str, Any]) -> None:
    """Assert ``config`` is a valid sample of the plain-dict ``space``."""
    params = space["params"]
    assert set(config) <= set(params)
    for name, p in params.items():
        active = all(
            ref in config and _accepts(accepted, config[ref])
            for ref, accepted in p.get("when", {}).items()
        )
        if p["type"] == "derived":
            inputs = [p["from"]] + ([p["times"]] if isinstance(p.get("times"), str) else [])
            active = active and all(i in config for i in inputs)
        assert (name in config) == active, f"{name}: present={name in config}, active={active}"
        if not active:
            continue

        value = config[name]
        kind = p["type"]
        if kind in ("float", "int"):
            assert type(value) is (float if kind == "float" else int), (name, value)
            assert p["low"] <= value <= p["high"], (name, value)
            if p.get("log"):
                assert value > 0
            step = p.get("step")
            if step is not None:
                k = (value - p["low"]) / step
                assert math.isclose(k, round(k), abs_tol=1e-8), (name, value)
        elif kind == "categorical":
            assert any(value == c and type(value) is type(c) for c in p["choices"]), (name, value)
        elif kind == "fixed":
            assert value == p["value"]
        else:
            times = config[p["times"]] if isinstance(p.get("times"), str) else p.get("times", 1)
            raw = config[p["from"]] * times + p.get("plus", 0)
            if p.get("as") == "int":
                assert type(value) is int and value == math.floor(raw + 0.5), (name, value, raw)
            else:
                assert type(value) is float and math.isclose(value, raw), (name, value, raw)


def _score(config: dict[str, Any]) -> float:
    # Any deterministic function of every value, so TPE has something to model.
    total = 0.0
    for value in config.values():
        if isinstance(value, (int, float)):
            total += math.log1p(abs(float(value)))
        else:
            total += len(str(value)) / 10
    return total


def _run(space: SearchSpace, sampler_name: str) -> tuple[optuna.Study, list[dict[str, Any]]]:
    plain = space.to_dict()
    searched = set(space.searched_names)
    configs = []

    def objective(trial: optuna.Trial) -> float:
        config = space.sample(trial)
        check_config(plain, config)
        # Optuna records exactly the searched params that were active.
        assert trial.params == {k: v for k, v in config.items() if k in searched}
        assert list(config) == [n for n in space.names if n in config]
        configs.append(config)
        trial.set_user_attr("config", config)
        return _score(config)

    study = optuna.create_study(sampler=SAMPLERS[sampler_name]())
    study.optimize(objective, n_trials=N_TRIALS)
    assert len(configs) == N_TRIALS
    return study, configs


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("preset", list_presets())
def test_preset_sampled_by_study(preset: str, sampler_name: str) -> None:
    space = get_preset(preset)
    study, _ = _run(space, sampler_name)
    # Re-running the best params, as a deploy step would, reproduces the whole config.
    best = study.best_trial
    assert space.sample(FixedTrial(best.params)) == best.user_attrs["config"]


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_conditional_space_sampled_by_study(sampler_name: str) -> None:
    space = SearchSpace.from_dict(CONDITIONAL)
    _, configs = _run(space, sampler_name)
    # Both branches, and the nested condition both ways, actually happened.
    assert {c["peft_method"] for c in configs} == {"lora", "full"}
    lora = [c for c in configs if c["peft_method"] == "lora"]
    assert any("rslora_scale" in c for c in lora)
    assert any("rslora_scale" not in c for c in lora)
    assert any("small_batch" in c for c in configs)
    assert any("small_batch" not in c for c in configs)


def test_dependency_order_keeps_declaration_order_where_possible() -> None:
    space = SearchSpace.from_dict(CONDITIONAL)
    assert space.names == [
        "peft_method", "lora_r", "lora_alpha_ratio", "lora_alpha", "use_rslora",
        "rslora_scale", "full_lr", "batch_size", "small_batch", "half_batch", "dropout",
    ]
    assert space.searched_names == [
        "peft_method", "lora_r", "lora_alpha_ratio", "use_rslora", "rslora_scale",
        "full_lr", "batch_size", "dropout",
    ]
    assert list(space.params()) == space.names


@pytest.mark.parametrize(
    ("fixed", "expected"),
    [
        pytest.param(
            {"peft_method": "full", "full_lr": 1e-5, "batch_size": 24, "dropout": 0.1},
            {"peft_method": "full", "full_lr": 1e-5, "batch_size": 24, "half_batch": 12.0,
             "dropout": 0.1},
            id="branch-false",
        ),
        pytest.param(
            {"peft_method": "lora", "lora_r": 5, "lora_alpha_ratio": 0.5, "use_rslora": True,
             "rslora_scale": 1.25, "batch_size": 8, "dropout": 0.0},
            # 5 * 0.5 + 1 = 3.5 rounds half up to 4 (Python's round() would give 4 too, but
            # 2.5 -> 2; see the next case).
            {"peft_method": "lora", "lora_r": 5, "lora_alpha_ratio": 0.5, "lora_alpha": 4,
             "use_rslora": True, "rslora_scale": 1.25, "batch_size": 8, "small_batch": True,
             "half_batch": 4.0, "dropout": 0.0},
            id="branch-true-nested-true",
        ),
        pytest.param(
            {"peft_method": "lora", "lora_r": 3, "lora_alpha_ratio": 0.5, "use_rslora": False,
             "batch_size": 16, "dropout": 0.3, "unused": 1},
            # 3 * 0.5 + 1 = 2.5 -> 3 (half up, not banker's 2). Extra FixedTrial keys are ignored.
            {"peft_method": "lora", "lora_r": 3, "lora_alpha_ratio": 0.5, "lora_alpha": 3,
             "use_rslora": False, "batch_size": 16, "small_batch": True, "half_batch": 8.0,
             "dropout": 0.3},
            id="nested-false-rounding",
        ),
    ],
)
def test_fixed_trial(fixed: dict[str, Any], expected: dict[str, Any]) -> None:
    space = SearchSpace.from_dict(CONDITIONAL)
    config = space.sample(FixedTrial(fixed))
    assert config == expected
    check_config(space.to_dict(), config)


def test_fixed_trial_missing_active_param_is_optunas_error() -> None:
    space = SearchSpace.from_dict(CONDITIONAL)
    with pytest.raises(ValueError, match="lora_r"):
        space.sample(FixedTrial({"peft_method": "lora", "batch_size": 8, "dropout": 0.1}))


def test_sample_returns_fresh_fixed_values() -> None:
    space = SearchSpace.from_dict({"params": {"mods": {"type": "fixed", "value": ["q", "v"]}}})
    first = space.sample(FixedTrial({}))
    first["mods"].append("k")
    assert space.sample(FixedTrial({})) == {"mods": ["q", "v"]}
