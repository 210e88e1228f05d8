"""One check of a sweep (`Sweep.check`): `launch --dry-run`, `launch` and the Python API refuse the same bad
sweeps, with the same message, before anything is created on disk."""

from __future__ import annotations

import pytest

from search.backends import get_backend
from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.sweep import load_sweep
from spaces import ConfigError

# What only the Ray backend refuses (its scheduler translation, PBT's population, the cluster's size):
# sweep changes -> the key the refusal names.
RAY_REFUSALS = {
    "an Optuna-only pruner": ({"pruner": "wilcoxon"}, "pruner.name"),
    "a scheduler argument Ray cannot take": ({"pruner": {"name": "asha", "args": {"grace_period": 0}}},
                                             "pruner.args.grace_period"),
    "PBT without a population size": ({"pruner": "pbt", "n_trials": None, "timeout": 600}, "n_trials"),
    "more GPUs per trial than the local Ray has": ({"ray": {"num_gpus": 0, "gpus_per_trial": 1}},
                                                   "ray.gpus_per_trial"),
    "more CPUs per trial than the local Ray has": ({"ray": {"num_cpus": 2, "cpus_per_trial": 4}},
                                                   "ray.cpus_per_trial"),
}


@pytest.mark.parametrize("case", list(RAY_REFUSALS))
def test_dry_run_launch_and_python_refuse_a_bad_ray_setting_alike_and_create_nothing(case, write_sweep, tmp_path,
                                                                                     capsys):
    changes, key = RAY_REFUSALS[case]
    path = write_sweep(backend="ray", **changes)
    runs = tmp_path / "runs"
    said = []
    for argv in (["launch", str(path), "--dry-run"], ["launch", str(path)]):
        assert main(argv) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert f"{key}:" in err, err
        said.append(err)
        assert not runs.exists()
    with pytest.raises(ConfigError) as raised:
        get_backend("ray")(load_sweep(path)).run()
    assert raised.value.key == key and not runs.exists()
    assert said[0] == said[1]


def test_the_python_api_checks_the_space_and_the_data_as_a_launch_does(write_sweep, tmp_path):
    # A target module the model does not have (the space check), then a column the data lacks (the data check).
    bad_space = write_sweep("space.yaml", space={"params": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "target_modules": {"type": "categorical", "choices": [["no_such_proj"]]}}})
    bad_data = write_sweep("data.yaml", dataset={"source": "bundled:support-qa", "prompt_column": "question"})
    for path, key in ((bad_space, "target_modules"), (bad_data, "dataset")):
        with pytest.raises(ConfigError) as raised:
            get_backend("optuna")(load_sweep(path)).run()
        assert key in str(raised.value), raised.value
        assert not (tmp_path / "runs").exists()


def test_a_sweep_is_checked_once(write_sweep):
    sweep = load_sweep(write_sweep())
    first = sweep.check()
    assert sweep.check() is first and first.data.errors == []
