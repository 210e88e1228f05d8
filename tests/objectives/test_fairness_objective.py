"""Fairness inside the classification objective: group metrics of the real predictions, balancing by
group in a trial, the test split's own groups in the final fit, and the bad inputs."""

from __future__ import annotations

import json

import pytest

from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
from objectives.fairness import FAIRNESS_METRICS, group_metrics
from search.spec import load_sweep
from spaces import ConfigError

DATA = DataConfig(source="bundled:support-intents-groups", group_column="customer_group", max_train_examples=200,
                  validation_fraction=0.25, max_eval_examples=120)
BUDGET = TrainBudget(max_steps=6, eval_every=6, batch_size=8, eval_batch_size=32, max_seq_length=64)
LORA = {"learning_rate": 1e-2, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}


@pytest.fixture(scope="module")
def objective():
    obj = get_objective("sequence_classification")(ModelConfig(name_or_path="bundled:tiny-support-lm"), DATA, BUDGET)
    obj.setup()
    return obj


def test_group_metrics_are_those_of_the_trials_own_predictions(objective):
    def predictions(model, trainer):
        out = trainer.predict(objective.eval_dataset)
        predictions.found = (out.label_ids, out.predictions.argmax(axis=-1))
        return {}

    metrics = objective.run_trial(LORA, after_training=predictions)
    labels, predicted = predictions.found
    assert len(objective.eval_groups) == len(labels)
    expected = group_metrics(labels, predicted, objective.eval_groups, labels=list(range(len(objective.label2id))))
    for name in FAIRNESS_METRICS:
        assert metrics[name] == pytest.approx(expected[name], nan_ok=True), name


def test_balancing_by_group_changes_what_a_trial_trains_on(objective):
    plain = objective.run_trial({**LORA, "group_balance": "none"})
    resampled = objective.run_trial({**LORA, "group_balance": "resample"})
    reweighted = objective.run_trial({**LORA, "group_balance": "reweight"})
    assert len({plain["train_loss"], resampled["train_loss"], reweighted["train_loss"]}) == 3
    # eval_loss of reweighted training is still the plain validation loss (no weights at evaluation).
    assert all(0.0 <= m["accuracy_group_min"] <= 1.0 for m in (plain, resampled, reweighted))


def test_the_final_fit_scores_the_test_split_with_its_own_groups(objective, tmp_path):
    metrics = objective.fit({**LORA, "group_balance": "reweight"}, tmp_path / "fit")
    assert "test_accuracy_group_gap" in metrics
    assert objective.metric_split == "validation"  # put back after the test evaluation
    assert len(objective.test_groups) == len(objective.test_dataset)


def _write(write_sweep, **dataset):
    return write_sweep(objective="sequence_classification",
                       dataset={"source": "bundled:support-intents-groups", **dataset},
                       space={"params": {"learning_rate": {"type": "fixed", "value": 1e-3},
                                         "group_balance": {"type": "categorical", "choices": ["none", "reweight"]}}},
                       metric="f1_macro")


def test_a_fairness_metric_without_a_group_column_is_refused(write_sweep):
    path = write_sweep(objective="sequence_classification", dataset={"source": "bundled:support-intents"},
                       metric="f1_macro", record_metrics=["demographic_parity_difference"])
    with pytest.raises(ConfigError, match="names no group column") as error:
        load_sweep(path)
    assert error.value.key == "record_metrics.0"


def test_group_balance_without_a_group_column_is_refused_at_launch(write_sweep):
    sweep = load_sweep(_write(write_sweep))
    with pytest.raises(ConfigError, match="no group column"):
        sweep.make_objective().check_space(sweep.space)


def test_a_group_column_with_a_single_group_stops_the_launch(write_sweep, tmp_path, capsys):
    from search.cli import main

    rows = [{"text": f"where is order {i}", "label": "track" if i % 2 else "refund", "channel": "app"} for i in range(60)]
    data = tmp_path / "one-group.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = _write(write_sweep, source=str(data), group_column="channel")
    assert main(["validate-data", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [f["check"] for f in report["findings"] if f["level"] == "error"] == ["groups"]
    assert main(["launch", str(path)]) == 2
    assert "at least two groups" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was created
