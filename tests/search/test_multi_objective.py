"""Multi-objective sweeps and constraints: a real study on the tiny model, its Pareto front through
`best`, `export --pareto` and `report`, and the bad inputs refused when the sweep loads."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import TINY_SWEEP, deep_merge
from search.backends import get_backend
from search.cli import main
from search.sweep import load_sweep
from search.store.storage import open_storage
from spaces import ConfigError


# Rank decides the adapter's size; the learning rate mostly decides the loss: a real trade-off.
SPACE = {"params": {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "lora_r": {"type": "categorical", "choices": [2, 4, 8, 16]},
    "lora_alpha": {"type": "derived", "from": "lora_r", "times": 2, "as": "int"},
}}


def _write(tmp_path, name="mo", **changes):
    data = deep_merge(TINY_SWEEP, {"name": name, "output_dir": str(tmp_path / "runs"), "space": SPACE, **changes})
    data.pop("pruner")  # the default (median) is dropped for multi-objective sweeps; asking for one is an error
    data.update({k: v for k, v in changes.items() if k == "pruner"})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pareto_study(tmp_path_factory):
    """A finished 6-trial sweep minimizing eval_loss and trainable_params; returns (file, study)."""
    root = tmp_path_factory.mktemp("mo")
    path = _write(root, metric=["eval_loss", {"name": "trainable_params", "direction": "minimize"}],
                  record_metrics=["latency_ms"], n_trials=6, sampler={"name": "tpe", "args": {"n_startup_trials": 3}})
    sweep = load_sweep(path)
    assert sweep.multi_objective and sweep.spec.pruner.name == "none"
    get_backend("optuna")(sweep).run()
    return path, optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def test_trials_carry_both_objectives_measured_for_real(pareto_study):
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from objectives import resolve_model_path

    path, study = pareto_study
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["eval_loss", "trainable_params"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    sweep = load_sweep(path)
    objective = sweep.make_objective()
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(sweep.spec.model))
    for trial in complete:
        metrics = trial.user_attrs["metrics"]
        assert trial.values == [metrics["eval_loss"], metrics["trainable_params"]]
        assert metrics["latency_ms"] > 0 and metrics["peak_memory_mb"] > 0
        # Counted apart from the trial: its adapter config applied to a fresh copy of the base model.
        fresh = get_peft_model(copy.deepcopy(base), objective.peft_config(trial.user_attrs["config"]))
        assert metrics["trainable_params"] == fresh.get_nb_trainable_parameters()[0]
    assert len({t.values[1] for t in complete}) > 1  # the ranks differ, so do the sizes


def test_best_and_status_give_the_pareto_front(pareto_study, capsys):
    path, study = pareto_study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    front = sorted(t.number for t in complete if not any(_dominates(o.values, t.values) for o in complete))
    assert main(["best", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(row["number"] for row in rows) == front
    assert all(len(row["values"]) == 2 for row in rows)
    assert main(["status", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pareto_front"] == front
    assert main(["best", str(path)]) == 0
    assert "Pareto front" in capsys.readouterr().out


def test_export_pareto_writes_every_front_trial_loadable_by_peft(pareto_study, tmp_path, capsys):
    from peft import PeftConfig

    path, study = pareto_study
    out = tmp_path / "pareto"
    assert main(["export", str(path), "--pareto", "--out", str(out)]) == 0
    summary = json.loads((out / "pareto.json").read_text())
    front = sorted(t.number for t in study.best_trials)
    assert [t["number"] for t in summary["trials"]] == front
    assert [m["name"] for m in summary["metrics"]] == ["eval_loss", "trainable_params"]
    for entry in summary["trials"]:
        trial = study.trials[entry["number"]]
        assert entry["values"] == dict(zip(study.metric_names, trial.values))
        config = PeftConfig.from_pretrained(str(out / entry["directory"]))
        assert config.r == trial.params["lora_r"]
        winner = yaml.safe_load((out / entry["directory"] / "winner.yaml").read_text())
        assert winner["provenance"]["values"] == entry["values"]


def test_export_without_a_choice_is_refused_for_a_pareto_front(pareto_study, tmp_path, capsys):
    assert main(["export", str(pareto_study[0]), "--out", str(tmp_path / "x")]) != 0
    assert "no single best trial" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_report_draws_the_pareto_front(pareto_study, tmp_path):
    from search.results.report import write_report

    files = write_report(pareto_study[1], tmp_path / "report")
    names = {p.name for p in files.images}
    assert "pareto_front.png" in names
    assert "intermediate_values.png" in files.skipped
    html = files.html.read_text()
    assert "Pareto front" in html and "plotly-pareto_front" in html


def test_constraints_make_trials_infeasible_and_best_skips_them(tmp_path, capsys):
    # At most 4 LoRA ranks' worth of parameters: rank 8 and 16 adapters break the constraint.
    # Rank 4 on q_proj (64 -> 64) and v_proj (64 -> 32) of both layers: 2 * 4 * (128 + 96) = 1792.
    limit = 1792
    path = _write(tmp_path, "constrained", metric="eval_loss", pruner="none", n_trials=6,
                  sampler={"name": "random"}, constraints=[{"metric": "trainable_params", "max": limit}])
    sweep = load_sweep(path)
    get_backend("optuna")(sweep).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if t.user_attrs["metrics"]["trainable_params"] <= limit]
    infeasible = [t for t in complete if t not in feasible]
    assert feasible and infeasible, "the seed should give both kinds; change it if the space changes"
    for trial in complete:
        (value,) = trial.user_attrs["constraints"].values()
        assert value == trial.user_attrs["metrics"]["trainable_params"] - limit
    best_feasible = min(feasible, key=lambda t: t.value)
    assert study.best_trial.number == best_feasible.number  # Optuna's own reading of the constraints
    assert main(["best", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["number"] == best_feasible.number
    assert {row["number"] for row in rows[: len(feasible)]} == {t.number for t in feasible}


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_multi_objective_with_pruning_is_refused_with_the_reason(tmp_path, pruner):
    path = _write(tmp_path, metric=["eval_loss", "trainable_params"], pruner=pruner)
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    assert error.value.key == "pruner.name"
    assert "Optuna does not prune multi-objective trials" in str(error.value)


@pytest.mark.parametrize(("changes", "key", "text"), [
    ({"metric": ["eval_loss", "eval_loss"]}, "metric", "listed twice"),
    ({"metric": ["eval_loss", "accuracy"]}, "metric.1.name", "does not report"),
    ({"metric": ["eval_loss", "trainable_params"], "sampler": "cmaes"}, "sampler.name", "optimizes one metric"),
    ({"metric": ["eval_loss", "trainable_params"], "backend": "ray"}, "backend", "optuna backend"),
    ({"record_metrics": ["f1_macro"]}, "record_metrics.0", "does not report"),
    ({"constraints": [{"metric": "latency", "max": 3}]}, "constraints.0.metric", "does not report"),
    ({"constraints": [{"metric": "latency_ms", "max": 3, "min": 1}]}, "constraints", "exactly one of max or min"),
])
def test_bad_metric_settings_are_refused_when_the_sweep_loads(tmp_path, changes, key, text):
    path = _write(tmp_path, **changes)
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    assert error.value.key.startswith(key), error.value
    assert text in str(error.value)


def test_export_pareto_of_a_single_objective_study_is_refused(tmp_path, capsys):
    path = _write(tmp_path, "single", metric="eval_loss", pruner="none", n_trials=1)
    sweep = load_sweep(path)
    get_backend("optuna")(sweep).run()
    assert main(["export", str(path), "--pareto", "--out", str(tmp_path / "out")]) != 0
    assert "needs a multi-objective study" in capsys.readouterr().err
