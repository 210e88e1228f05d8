"""The sequence_classification task (objectives/tasks/sequence_classification.py): label maps, every
classification metric of a real trial, and fairness between groups -- group metrics of the real
predictions, balancing by group in a trial, the test split's own groups in the final fit -- with
the bad inputs."""

from __future__ import annotations

import json
import math

import pytest

from objectives import DataConfig, ModelConfig, TrainBudget, TrialOptions, get_objective, load_splits
from objectives.data.fairness import FAIRNESS_METRICS, group_metrics
from search.sweep import load_sweep
from spaces import ConfigError

LLAMA = "bundled:tiny-support-lm"
BUDGET = TrainBudget(max_steps=2, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=96)
LORA = {"learning_rate": 3e-3, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}
CLASSIFICATION = ["accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro", "f1_micro"]
# Fairness: the bundled intents with a customer group per row.
GROUP_DATA = DataConfig(source="bundled:support-intents-groups", group_column="customer_group", max_train_examples=200,
                        validation_fraction=0.25, max_eval_examples=120)
GROUP_BUDGET = TrainBudget(max_steps=6, eval_every=6, batch_size=8, eval_batch_size=32, max_seq_length=64)
GROUP_LORA = {"learning_rate": 1e-2, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}


# ---------------------------------------------------------------- labels and classification metrics


def _intents_file(tmp_path):
    path = tmp_path / "intents.jsonl"
    rows = [{"text": f"please refund order {i}", "label": i % 3} for i in range(30)]
    rows += [{"text": f"where is parcel {i}", "label": 3} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_label_map_renames_and_merges_classes(tmp_path):
    data = DataConfig(source=str(_intents_file(tmp_path)), label_map={0: "refund", 1: "refund", 2: "refund", 3: "track"})
    objective = get_objective("sequence_classification")(ModelConfig(name_or_path=LLAMA), data, BUDGET)
    objective.setup()
    assert objective.tokenized_data.state.label2id == {"refund": 0, "track": 1}
    assert objective.base_model.config.id2label == {0: "refund", 1: "track"}
    raw = load_splits(data, seed=0, columns=["text", "label"])[0]
    assert objective.train_dataset["labels"] == [0 if label < 3 else 1 for label in raw["label"]]
    assert 0.0 <= objective.run_trial(LORA)["accuracy"] <= 1.0


def test_a_label_the_map_misses_is_refused(tmp_path):
    data = DataConfig(source=str(_intents_file(tmp_path)), label_map={0: "refund", 1: "refund", 3: "track"})
    objective = get_objective("sequence_classification")(ModelConfig(name_or_path=LLAMA), data, BUDGET)
    with pytest.raises(ConfigError, match=r"\['2'\].*not in dataset.label_map"):
        objective.setup()

def test_classification_trial_reports_every_classification_metric():
    obj = get_objective("sequence_classification")(
        ModelConfig(name_or_path="bundled:tiny-support-lm"),
        DataConfig(source="bundled:support-intents", max_train_examples=32, max_eval_examples=32),
        TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64), seed=0)
    reports = []
    metrics = obj.run_trial({**LORA, "target_modules": "attention_qv"}, report=lambda step, m: reports.append(m) or False)
    assert len(reports) == 2
    for report in reports:
        for name in CLASSIFICATION:
            assert 0.0 <= report[name] <= 1.0, name
    assert metrics["f1_micro"] == pytest.approx(metrics["accuracy"])  # single-label: micro F1 is accuracy



# ---------------------------------------------------------------- fairness between groups


@pytest.fixture(scope="module")
def objective():
    obj = get_objective("sequence_classification")(ModelConfig(name_or_path=LLAMA), GROUP_DATA, GROUP_BUDGET)
    obj.setup()
    return obj


def test_group_metrics_are_those_of_the_trials_own_predictions(objective):
    def predictions(model, trainer):
        out = trainer.predict(objective.eval_dataset)
        predictions.found = (out.label_ids, out.predictions.argmax(axis=-1))
        return {}

    metrics = objective.run_trial(GROUP_LORA, options=TrialOptions(after_training=predictions))
    labels, predicted = predictions.found
    state = objective.tokenized_data.state
    assert len(state.groups["validation"]) == len(labels)
    expected = group_metrics(labels, predicted, state.groups["validation"], labels=list(range(len(state.label2id))))
    for name in FAIRNESS_METRICS:
        assert metrics[name] == pytest.approx(expected[name], nan_ok=True), name


def test_balancing_by_group_changes_what_a_trial_trains_on(objective):
    plain = objective.run_trial({**GROUP_LORA, "group_balance": "none"})
    resampled = objective.run_trial({**GROUP_LORA, "group_balance": "resample"})
    reweighted = objective.run_trial({**GROUP_LORA, "group_balance": "reweight"})
    assert len({plain["train_loss"], resampled["train_loss"], reweighted["train_loss"]}) == 3
    # eval_loss of reweighted training is still the plain validation loss (no weights at evaluation).
    assert all(0.0 <= m["accuracy_group_min"] <= 1.0 for m in (plain, resampled, reweighted))


def test_the_final_fit_scores_the_test_split_with_its_own_groups(objective, tmp_path):
    metrics = objective.fit({**GROUP_LORA, "group_balance": "reweight"}, tmp_path / "fit")
    assert "test_accuracy_group_gap" in metrics
    state = objective.tokenized_data.state
    assert len(state.groups["test"]) == len(objective.test_dataset)
    assert len(state.groups["validation"]) == len(objective.eval_dataset)
    # The test split's groups scored the test rows; trials after the fit still score validation's.
    assert math.isfinite(objective.run_trial(GROUP_LORA)["accuracy_group_gap"])


def test_evaluate_scores_a_split_with_that_splits_groups(objective):
    import torch
    from torch.utils.data import DataLoader

    from objectives.engine.trial import adapter_on

    state = objective.tokenized_data.state
    with adapter_on(objective.base_model, objective.peft_config(GROUP_LORA), GROUP_LORA) as model:
        on_test = objective.evaluate(model, objective.test_dataset, split="test")
        on_validation = objective.evaluate(model, objective.eval_dataset, split="validation")
        model.eval()
        labels, predicted = [], []
        with torch.no_grad():
            for batch in DataLoader(objective.eval_dataset, batch_size=32, collate_fn=objective.collator()):
                labels += batch.pop("labels").tolist()
                predicted += model(**batch).logits.argmax(-1).tolist()
    assert set(FAIRNESS_METRICS) <= set(on_test)
    expected = group_metrics(labels, predicted, state.groups["validation"], labels=list(range(len(state.label2id))))
    for name in FAIRNESS_METRICS:
        assert on_validation[name] == pytest.approx(expected[name], nan_ok=True), name


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
