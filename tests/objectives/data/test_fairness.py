"""Fairness metrics between groups, group checks, and balancing training by group (objectives/data/fairness.py)."""

from __future__ import annotations

import copy
import json
import math
import random
import sys
from collections import Counter

import pytest
import torch
from conftest import load_script
from datasets import Dataset

from objectives import DataConfig, ModelConfig, load_splits, resolve_model_path
from objectives.data.fairness import (
    BALANCE_CHOICES,
    FAIRNESS_METRICS,
    WEIGHT_COLUMN,
    WeightedCollator,
    balance_dataset,
    check_balance_choices,
    check_groups,
    fairlearn_unavailable,
    group_metrics,
    group_weights,
    resample_by_group,
    weighted_trainer,
)
from objectives.data.sources import ASSETS
from spaces import ConfigError

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")

GROUPS_DATA = DataConfig(source="bundled:support-intents-groups")
GROUP_COLUMN = "customer_group"


def _draw(n: int, classes: list, groups: list, seed: int, accuracy: float = 0.7):
    """Random labels, predictions right `accuracy` of the time, and groups."""
    rng = random.Random(seed)
    y_true = [rng.choice(classes) for _ in range(n)]
    y_pred = [y if rng.random() < accuracy else rng.choice(classes) for y in y_true]
    return y_true, y_pred, [rng.choice(groups) for _ in range(n)]


# ------------------------------------------------------------------------------------- metrics


def test_metric_names_and_directions():
    y_true, y_pred, groups = _draw(60, [0, 1, 2], ["a", "b"], seed=0)
    assert set(group_metrics(y_true, y_pred, groups)) == set(FAIRNESS_METRICS)
    assert FAIRNESS_METRICS["accuracy_group_min"] == "maximize"
    assert all(d == "minimize" for name, d in FAIRNESS_METRICS.items() if name != "accuracy_group_min")


@pytest.mark.parametrize("classes", [[0, 1], ["no", "yes"]])
def test_binary_gaps_are_fairlearns_own(classes):
    y_true, y_pred, groups = _draw(300, classes, ["app", "email", "phone"], seed=1)
    positive = classes[1]  # the default positive label: the larger one
    y_true01 = [int(y == positive) for y in y_true]
    y_pred01 = [int(y == positive) for y in y_pred]
    kw = {"sensitive_features": groups}

    def difference(metric):
        frame = fairlearn_metrics.MetricFrame(metrics=metric, y_true=y_true01, y_pred=y_pred01, **kw)
        return frame.difference(method="between_groups")

    got = group_metrics(y_true, y_pred, groups)
    assert got["demographic_parity_difference"] == pytest.approx(
        fairlearn_metrics.demographic_parity_difference(y_true01, y_pred01, **kw))
    assert got["equal_opportunity_difference"] == pytest.approx(difference(fairlearn_metrics.true_positive_rate))
    assert got["predictive_equality_difference"] == pytest.approx(difference(fairlearn_metrics.false_positive_rate))
    assert got["accuracy_group_min"] == pytest.approx(
        fairlearn_metrics.accuracy_score_group_min(y_true, y_pred, **kw))
    assert got["accuracy_group_gap"] == pytest.approx(
        fairlearn_metrics.accuracy_score_difference(y_true, y_pred, **kw))
    assert got["equal_opportunity_difference"] > 0  # a real comparison, not 0 == 0


def test_positive_label_picks_the_class_that_is_scored():
    y_true, y_pred, groups = _draw(300, ["ham", "spam"], ["a", "b"], seed=2)
    as_spam = group_metrics(y_true, y_pred, groups, positive_label="spam")
    as_ham = group_metrics(y_true, y_pred, groups, positive_label="ham")
    # One class's true-positive rate is the other's true-negative rate: the two gaps swap.
    assert as_ham["equal_opportunity_difference"] == pytest.approx(as_spam["predictive_equality_difference"])
    assert as_ham["predictive_equality_difference"] == pytest.approx(as_spam["equal_opportunity_difference"])
    with pytest.raises(ValueError, match="positive_label 'eggs'"):
        group_metrics(y_true, y_pred, groups, positive_label="eggs")


def test_a_group_without_positives_has_no_true_positive_rate():
    # Group c has no positive example: fairlearn reports its TPR as 0, a gap of 1 to group a. Unmeasured, it
    # does not count: the gap is between a (TPR 1) and b (TPR 0.5) alone.
    y_true = [1, 1, 0, 0] + [1, 1, 0, 0] + [0, 0, 0, 0]
    y_pred = [1, 1, 0, 0] + [1, 0, 0, 0] + [0, 1, 0, 0]
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert fairlearn_metrics.MetricFrame(metrics=fairlearn_metrics.true_positive_rate, y_true=y_true, y_pred=y_pred,
                                         sensitive_features=groups).difference() == 1.0
    got = group_metrics(y_true, y_pred, groups)
    assert got["equal_opportunity_difference"] == pytest.approx(0.5)
    assert got["predictive_equality_difference"] == pytest.approx(0.25)  # FPR a 0, b 0, c 1/4


def _hand_worst_gaps(y_true, y_pred, groups, classes):
    """The multi-class definition, written out with plain loops: per class, one-vs-rest rates per
    group where defined, gap = max - min over groups, worst gap over classes."""
    worst = {"dp": None, "tpr": None, "fpr": None}
    for c in classes:
        rates = {"dp": [], "tpr": [], "fpr": []}
        for g in sorted(set(groups)):
            rows = [(t, p) for t, p, gg in zip(y_true, y_pred, groups) if gg == g]
            rates["dp"].append(sum(p == c for _, p in rows) / len(rows))
            pos = [p for t, p in rows if t == c]
            neg = [p for t, p in rows if t != c]
            if pos:
                rates["tpr"].append(sum(p == c for p in pos) / len(pos))
            if neg:
                rates["fpr"].append(sum(p == c for p in neg) / len(neg))
        for key, values in rates.items():
            if len(values) >= 2:
                gap = max(values) - min(values)
                worst[key] = gap if worst[key] is None else max(worst[key], gap)
    return worst


def test_multiclass_extension_is_the_worst_one_vs_rest_gap():
    # Small enough to check by eye. Classes x, y, z; groups a, b.
    y_true = ["x", "x", "y", "z", "x", "y", "y", "z"]
    y_pred = ["x", "y", "y", "z", "x", "x", "y", "x"]
    groups = ["a", "a", "a", "a", "b", "b", "b", "b"]
    got = group_metrics(y_true, y_pred, groups)
    # Selection rates a: x 1/4, y 2/4, z 1/4; b: x 3/4, y 1/4, z 0 -> gaps 1/2, 1/4, 1/4.
    assert got["demographic_parity_difference"] == pytest.approx(0.5)
    # TPR a: x 1/2, y 1, z 1; b: x 1, y 1/2, z 0 -> gaps 1/2, 1/2, 1: worst 1 (class z).
    assert got["equal_opportunity_difference"] == pytest.approx(1.0)
    # FPR a: x 0/2, y 1/3, z 0/3; b: x 2/3, y 0/2, z 0/3 -> gaps 2/3, 1/3, 0.
    assert got["predictive_equality_difference"] == pytest.approx(2 / 3)
    # Accuracy a 3/4, b 2/4.
    assert got["accuracy_group_min"] == pytest.approx(0.5) and got["accuracy_group_gap"] == pytest.approx(0.25)
    hand = _hand_worst_gaps(y_true, y_pred, groups, ["x", "y", "z"])
    assert (hand["dp"], hand["tpr"], hand["fpr"]) == pytest.approx((0.5, 1.0, 2 / 3))


def test_multiclass_matches_the_hand_computation_and_fairlearn_per_class():
    classes = list(range(6))
    y_true, y_pred, groups = _draw(400, classes, ["app", "email", "phone"], seed=3)
    got = group_metrics(y_true, y_pred, groups, labels=classes)
    hand = _hand_worst_gaps(y_true, y_pred, groups, classes)
    assert got["demographic_parity_difference"] == pytest.approx(hand["dp"])
    assert got["equal_opportunity_difference"] == pytest.approx(hand["tpr"])
    assert got["predictive_equality_difference"] == pytest.approx(hand["fpr"])
    # The same through fairlearn's own rate functions, one class at a time (positive_label).
    per_class = [group_metrics(y_true, y_pred, groups, labels=classes, positive_label=c) for c in classes]
    for name in ("demographic_parity_difference", "equal_opportunity_difference", "predictive_equality_difference"):
        assert got[name] == pytest.approx(max(m[name] for m in per_class)), name


def test_labels_decide_binary_or_one_vs_rest():
    # Only classes 0 and 1 occur, but the task has three: one-vs-rest over all three, not binary on 1.
    y_true, y_pred, groups = [0, 1, 0, 1], [0, 0, 1, 1], ["a", "a", "b", "b"]
    binary = group_metrics(y_true, y_pred, groups)
    three = group_metrics(y_true, y_pred, groups, labels=[0, 1, 2])
    assert binary["equal_opportunity_difference"] == pytest.approx(1.0)  # TPR of 1: a 0, b 1
    assert three["equal_opportunity_difference"] == pytest.approx(1.0)
    assert three["predictive_equality_difference"] == pytest.approx(1.0)  # FPR of 0 (or 1): a 1, b 0


def test_per_group_accuracy_on_request():
    got = group_metrics(["x", "y", "x", "y"], ["x", "y", "y", "y"], ["app", "app", "phone", "phone"], per_group=True)
    assert got["accuracy_group[app]"] == 1.0 and got["accuracy_group[phone]"] == 0.5
    assert all(isinstance(v, float) for v in got.values())


def test_a_gap_no_class_can_measure_is_nan():
    # Every positive is in group a: no second group has a true-positive rate.
    got = group_metrics([1, 0, 0, 0], [1, 0, 1, 0], ["a", "a", "b", "b"])
    assert math.isnan(got["equal_opportunity_difference"])
    assert got["predictive_equality_difference"] == pytest.approx(0.5)


def test_without_fairlearn_the_error_says_how_to_install(monkeypatch):
    assert fairlearn_unavailable() is None
    monkeypatch.setitem(sys.modules, "fairlearn.metrics", None)
    assert "pip install 'ftsweep[fairness]'" in fairlearn_unavailable()
    with pytest.raises(ImportError, match=r"ftsweep\[fairness\]"):
        group_metrics([0, 1], [0, 1], ["a", "b"])


def test_group_metrics_bad_input():
    with pytest.raises(ValueError, match="at least two groups; all 3 rows are in group 'app'"):
        group_metrics([0, 1, 0], [0, 1, 1], ["app"] * 3)
    with pytest.raises(ValueError, match="3 labels, 2 predictions and 3 groups"):
        group_metrics([0, 1, 0], [0, 1], ["a", "b", "a"])
    with pytest.raises(ValueError, match="no group"):
        group_metrics([0, 1, 0], [0, 1, 1], ["a", None, "b"])


# ------------------------------------------------------------------------------------- checks


def test_a_single_group_is_refused():
    train = Dataset.from_dict({"text": ["t"] * 30, GROUP_COLUMN: ["app"] * 30})
    validation = Dataset.from_dict({"text": ["t"] * 5, GROUP_COLUMN: ["app"] * 5})
    with pytest.raises(ConfigError) as err:
        check_groups(train, validation, GROUP_COLUMN, source="s.yaml")
    message = str(err.value)
    assert "at least two groups" in message and "'app' (35 rows)" in message
    assert "s.yaml" in message and "dataset.group_column" in message


def test_a_single_group_in_validation_is_refused():
    with pytest.raises(ConfigError, match="two groups in the validation split.*'email' \\(8 rows\\)"):
        check_groups(["app", "email"] * 20, ["email"] * 8, GROUP_COLUMN)


def test_a_missing_group_column_lists_the_columns():
    train = Dataset.from_dict({"text": ["t"] * 4, "label": ["x"] * 4})
    with pytest.raises(ConfigError) as err:
        check_groups(train, train, GROUP_COLUMN)
    assert "no group column 'customer_group'" in str(err.value)
    assert "columns present: ['text', 'label']" in str(err.value)


def test_rows_without_a_group_are_refused():
    with pytest.raises(ConfigError, match="1 validation row\\(s\\) have no group.*row 2"):
        check_groups(["a", "b"] * 10, ["a", "b", None, "a"], GROUP_COLUMN)
    with pytest.raises(ConfigError, match="strings, integers or booleans"):
        check_groups(["a", "b"] * 10, [["a"], ["b"]], GROUP_COLUMN)


def test_group_warnings():
    train = ["app"] * 50 + ["email"] * 50 + ["fax"] * 5
    validation = ["app"] * 20 + ["email"] * 20 + ["phone"] * 3
    warnings = check_groups(train, validation, GROUP_COLUMN)
    assert warnings == [
        "group 'phone' has 3 validation rows but none in train: the model never trains on it",
        "group 'phone' has only 3 validation rows: its rates, and so the gaps, are noisy",
        "group 'fax' has 5 train rows but none in validation: its gaps are not measured",
    ]
    assert check_groups(["a", "b"] * 30, ["a", "b"] * 15, GROUP_COLUMN) == []


def test_too_few_rows_per_group_and_class_is_a_warning():
    classes = [f"intent{i}" for i in range(20)]
    validation = Dataset.from_dict({"label": classes * 10, GROUP_COLUMN: ["app", "phone"] * 100})
    train = Dataset.from_dict({"label": classes * 20, GROUP_COLUMN: ["app", "phone"] * 200})
    assert check_groups(train, validation, GROUP_COLUMN) == []
    warnings = check_groups(train, validation, GROUP_COLUMN, label_column="label")
    assert warnings == [(
        "about 5.0 validation rows per group and class (200 rows, 2 groups, 20 classes): equal_opportunity_difference "
        "and predictive_equality_difference, worst gaps over classes, rest on a few rows each and are often large by "
        "chance; evaluate on more rows, or use accuracy_group_gap or demographic_parity_difference")]
    bigger = Dataset.from_dict({"label": classes * 20, GROUP_COLUMN: ["app", "phone"] * 200})
    assert check_groups(train, bigger, GROUP_COLUMN, label_column="label") == []


def test_balance_choices_are_checked():
    check_balance_choices(BALANCE_CHOICES, group_column=GROUP_COLUMN)
    check_balance_choices(["none"], group_column=None)
    with pytest.raises(ConfigError, match="unknown group balancing.*'upsample'"):
        check_balance_choices(["none", "upsample"], group_column=GROUP_COLUMN)
    with pytest.raises(ConfigError, match="no group column"):
        check_balance_choices(["none", "reweight"], group_column=None, source="s.yaml")


# ------------------------------------------------------------------------------------- balancing


@pytest.fixture
def unbalanced():
    groups = ["app"] * 12 + ["email"] * 5 + ["phone"] * 3
    return Dataset.from_dict({"row": list(range(len(groups))), GROUP_COLUMN: groups})


def test_resampling_evens_the_groups_deterministically(unbalanced):
    resampled = resample_by_group(unbalanced, GROUP_COLUMN, seed=0)
    assert Counter(resampled[GROUP_COLUMN]) == {"app": 12, "email": 12, "phone": 12}
    assert list(resampled["row"])[:20] == list(range(20))  # every original row, once, first
    # The extra rows are copies of rows of their own group.
    assert all(unbalanced[row][GROUP_COLUMN] == group for row, group in zip(resampled["row"], resampled[GROUP_COLUMN]))
    assert list(resample_by_group(unbalanced, GROUP_COLUMN, seed=0)["row"]) == list(resampled["row"])
    assert list(resample_by_group(unbalanced, GROUP_COLUMN, seed=1)["row"]) != list(resampled["row"])
    # Group values may come separately (e.g. from the raw split of a tokenized dataset).
    by_values = resample_by_group(unbalanced.remove_columns(GROUP_COLUMN), unbalanced[GROUP_COLUMN], seed=0)
    assert list(by_values["row"]) == list(resampled["row"])


def test_reweighting_is_inverse_frequency_with_mean_one(unbalanced):
    weights = group_weights(unbalanced, GROUP_COLUMN)
    assert sum(weights) / len(weights) == pytest.approx(1.0)
    by_group = dict(zip(unbalanced[GROUP_COLUMN], weights))
    assert by_group == pytest.approx({"app": 20 / (3 * 12), "email": 20 / (3 * 5), "phone": 20 / (3 * 3)})
    totals = Counter()
    for group, weight in zip(unbalanced[GROUP_COLUMN], weights):
        totals[group] += weight
    assert len({round(t, 9) for t in totals.values()}) == 1  # every group carries the same total weight


def test_balance_dataset_per_choice(unbalanced):
    assert balance_dataset(unbalanced, "none", GROUP_COLUMN, seed=0) is unbalanced
    assert len(balance_dataset(unbalanced, "resample", GROUP_COLUMN, seed=0)) == 36
    weighted = balance_dataset(unbalanced, "reweight", GROUP_COLUMN, seed=0)
    assert list(weighted[WEIGHT_COLUMN]) == pytest.approx(group_weights(unbalanced, GROUP_COLUMN))
    again = balance_dataset(weighted, "reweight", GROUP_COLUMN, seed=0)  # replaces, never duplicates, the column
    assert again.column_names.count(WEIGHT_COLUMN) == 1
    with pytest.raises(ValueError, match="group_balance must be one of none, resample, reweight"):
        balance_dataset(unbalanced, "smote", GROUP_COLUMN, seed=0)
    with pytest.raises(ValueError, match="2 group values for 20 rows"):
        group_weights(unbalanced, ["a", "b"])


def test_weighted_collator_batches_the_weights():
    collate = WeightedCollator(lambda rows: {"x": torch.tensor([r["x"] for r in rows])})
    batch = collate([{"x": 1, WEIGHT_COLUMN: 0.5}, {"x": 2, WEIGHT_COLUMN: 2.0}])
    assert torch.equal(batch["x"], torch.tensor([1, 2]))
    assert batch[WEIGHT_COLUMN].dtype == torch.float32 and batch[WEIGHT_COLUMN].tolist() == [0.5, 2.0]
    assert set(collate([{"x": 1}, {"x": 2}])) == {"x"}  # evaluation: no weights
    with pytest.raises(ValueError, match="some examples"):
        collate([{"x": 1, WEIGHT_COLUMN: 0.5}, {"x": 2}])


@pytest.fixture(scope="module")
def tiny_classifier():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _weighted_batch_trainer(tiny_classifier, tmp_path, rows: int = 8, **args):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from objectives.engine.trial import sweep_trainer_class

    tokenizer, model = tiny_classifier
    raw = load_splits(GROUPS_DATA, seed=0, columns=["text", "label", GROUP_COLUMN]).train.select(range(rows))
    data = raw.map(lambda b: tokenizer(b["text"], truncation=True, max_length=48), batched=True,
                   remove_columns=raw.column_names)
    data = data.add_column("labels", [i % 3 for i in range(rows)])
    data = balance_dataset(data, "reweight", raw[GROUP_COLUMN], seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=rows, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, **args)
    trainer = weighted_trainer(sweep_trainer_class())(
        model=model, args=args, train_dataset=data, data_collator=WeightedCollator(DataCollatorWithPadding(tokenizer)))
    return trainer, next(iter(trainer.get_train_dataloader()))


def _hand_cross_entropy(model, batch, smoothing: float = 0.0) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = logits.log_softmax(-1)
    nll = -log_probs[torch.arange(len(batch["labels"])), batch["labels"]]
    return (1 - smoothing) * nll - smoothing * log_probs.mean(-1)


def test_weighted_loss_is_the_weighted_mean_cross_entropy(tiny_classifier, tmp_path):
    trainer, batch = _weighted_batch_trainer(tiny_classifier, tmp_path)
    model = tiny_classifier[1].eval()
    weights = batch[WEIGHT_COLUMN]
    assert len(set(weights.tolist())) > 1  # the batch mixes groups, so the weights differ
    with torch.no_grad():
        ce = _hand_cross_entropy(model, batch)
        loss = trainer.compute_loss(model, dict(batch))
        unweighted = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != WEIGHT_COLUMN})
    assert loss.item() == pytest.approx((weights * ce).mean().item(), rel=1e-5)
    assert unweighted.item() == pytest.approx(ce.mean().item(), rel=1e-5)  # no weights: the model's own loss
    assert abs(loss.item() - unweighted.item()) > 1e-4
    # Under gradient accumulation Trainer passes the accumulated example count; the loss is scaled the way
    # Trainer then expects (by that count where the model takes it, else the batch mean it divides itself).
    with torch.no_grad():
        accumulated = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2 * len(ce)))
    expected = (weights * ce).sum() / (2 * len(ce)) if trainer.model_accepts_loss_kwargs else (weights * ce).mean()
    assert accumulated.item() == pytest.approx(expected.item(), rel=1e-5)


def test_weighted_loss_keeps_label_smoothing(tiny_classifier, tmp_path):
    trainer, batch = _weighted_batch_trainer(tiny_classifier, tmp_path, label_smoothing_factor=0.1)
    model = tiny_classifier[1].eval()
    with torch.no_grad():
        expected = (batch[WEIGHT_COLUMN] * _hand_cross_entropy(model, batch, smoothing=0.1)).mean()
        assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_weighted_trainer_trains(tiny_classifier, tmp_path):
    tokenizer, model = tiny_classifier
    trainer, _ = _weighted_batch_trainer((tokenizer, copy.deepcopy(model)), tmp_path, max_steps=2, learning_rate=1e-3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss) and trainer.state.global_step == 2
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


# ------------------------------------------------------------------------------------- bundled data


def test_bundled_group_dataset_loads_with_two_groups_per_split():
    splits = load_splits(GROUPS_DATA, seed=0, columns=["text", "label", GROUP_COLUMN])
    for split in splits:
        assert len(set(split[GROUP_COLUMN])) >= 2
    assert set(splits.train[GROUP_COLUMN]) == {"app", "email", "phone"}
    assert check_groups(splits.train, splits.validation, GROUP_COLUMN) == []
    assert "rows per group and class" in check_groups(splits.train, splits.validation, GROUP_COLUMN,
                                                      label_column="label")[0]  # 108 rows, 3 groups, 20 intents
    # Group shares differ by intent: the phone share of contact_human is far above its overall share.
    rows = list(zip(splits.train["label"], splits.train[GROUP_COLUMN]))
    phone_overall = sum(g == "phone" for _, g in rows) / len(rows)
    contact = [g for label, g in rows if label == "contact_human"]
    assert sum(g == "phone" for g in contact) / len(contact) > 2 * phone_overall


def test_bundled_group_dataset_is_rebuilt_bit_for_bit():
    build = load_script("build_demo_assets")
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    shipped = [json.loads(line) for line in (ASSETS / build.GROUPS_FILE).read_text().splitlines()]
    assert shipped == build.generate_intents_groups(manifest["groups_dataset"]["seed"], len(shipped))
    assert len(shipped) == manifest["groups_dataset"]["records"] == 1200
    assert len({r["text"] for r in shipped}) == len(shipped)
    phone = [r["text"] for r in shipped if r[GROUP_COLUMN] == "phone"]
    assert all(t == t.lower() and not any(ch in t for ch in ".,?!@") for t in phone)  # transcripts
