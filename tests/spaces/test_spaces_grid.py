from __future__ import annotations

import itertools

import optuna
import pytest

from spaces import ConfigError
from spaces import resolve_space
from spaces import SearchSpace


pytestmark = pytest.mark.filterwarnings("error")
optuna.logging.set_verbosity(optuna.logging.WARNING)

GRIDDABLE = {
    "params": {
        "scheduler": {"type": "categorical", "choices": ["linear", "cosine"]},
        "epochs": {"type": "int", "low": 1, "high": 5, "step": 2},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
        "peft_method": {"type": "fixed", "value": "lora"},
        "double_epochs": {"type": "derived", "from": "epochs", "times": 2, "as": "int"},
    }
}


def test_grid_values() -> None:
    grid = SearchSpace.from_dict(GRIDDABLE).grid()
    # Fixed/derived params are not suggested, so GridSampler must not see them. Float steps
    # are exact decimals (0.30000000000000004 would be a different grid point).
    assert grid == {
        "scheduler": ["linear", "cosine"],
        "epochs": [1, 3, 5],
        "dropout": [0.0, 0.1, 0.2, 0.3],
    }


def test_grid_sampler_visits_every_point_once() -> None:
    space = SearchSpace.from_dict(GRIDDABLE)
    grid = space.grid()
    seen = []

    def objective(trial: optuna.Trial) -> float:
        config = space.sample(trial)
        assert config["double_epochs"] == 2 * config["epochs"]
        seen.append((config["dropout"], config["epochs"], config["scheduler"]))
        return config["dropout"] + config["epochs"]

    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(objective, n_trials=100)  # GridSampler stops the study when exhausted.
    expected = set(itertools.product(grid["dropout"], grid["epochs"], grid["scheduler"]))
    assert len(seen) == len(expected) == 24
    assert set(seen) == expected


def test_grid_with_conditional_param_runs_full_product() -> None:
    # Documented limitation: GridSampler enumerates the Cartesian product, so points that
    # differ only in an inactive param are evaluated again as duplicates.
    space = SearchSpace.from_dict(
        {
            "params": {
                "method": {"type": "categorical", "choices": ["lora", "full"]},
                "r": {"type": "categorical", "choices": [4, 8], "when": {"method": "lora"}},
            }
        }
    )
    configs = []
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    study.optimize(lambda t: configs.append(space.sample(t)) or 0.0, n_trials=100)
    assert len(configs) == 4
    assert sorted(map(str, configs)) == sorted(
        map(str, [{"method": "lora", "r": 4}, {"method": "lora", "r": 8},
                  {"method": "full"}, {"method": "full"}])
    )


def test_grid_error_on_a_preset_points_at_the_sweep_file() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_space("lora", source="sweep.yaml").grid()
    assert str(info.value).startswith("sweep.yaml: space[lora].params.learning_rate: ")


@pytest.mark.parametrize(
    ("param", "needle"),
    [
        pytest.param({"type": "float", "low": 0.0, "high": 1.0}, "needs `step`", id="continuous"),
        pytest.param({"type": "float", "low": 1e-5, "high": 1e-2, "log": True}, "log-scaled float",
                     id="log-float"),
        pytest.param({"type": "int", "low": 4, "high": 64, "log": True}, "log-scaled int",
                     id="log-int"),
    ],
)
def test_grid_rejects_non_enumerable(param: dict, needle: str) -> None:
    space = SearchSpace.from_dict(
        {"params": {"ok": {"type": "categorical", "choices": [1, 2]}, "x": param}},
        source="sweep.yaml",
    )
    with pytest.raises(ConfigError) as info:
        space.grid()
    message = str(info.value)
    assert message.startswith("sweep.yaml: space.params.x: ")
    assert needle in message and "Fix:" in message
