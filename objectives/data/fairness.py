"""Fairness across groups of the data: group-wise metrics and gaps, and balancing training by group.

When the data has a group column (the channel a request came from, a region, a demographic
attribute), a classifier can serve one group better than another. These metrics measure that on
the validation split, with fairlearn (`pip install 'ftsweep[fairness]'`), so a sweep can record
them per trial, bound them with a constraint, or minimize one as a second objective:

| metric                           | what it measures                                                    | direction |
|----------------------------------|---------------------------------------------------------------------|-----------|
| `demographic_parity_difference`  | largest gap between groups in how often a class is predicted        | minimize  |
| `equal_opportunity_difference`   | largest gap in true-positive rate (a class's recall within a group) | minimize  |
| `predictive_equality_difference` | largest gap in false-positive rate                                  | minimize  |
| `accuracy_group_min`             | accuracy of the worst-served group                                  | maximize  |
| `accuracy_group_gap`             | best group's accuracy minus the worst's                             | minimize  |

fairlearn's parity metrics are defined for binary predictions. With two classes (or a
`positive_label`) they are fairlearn's, for the positive class. With more classes each class is
scored one-vs-rest (this class or not) and the largest gap over classes is reported: a model is
only as fair as its least fair class, and the gap of "is this `refund_status`?" between app users
and callers is exactly the binary gap of that question. A max over classes, not a mean, so a
gap on a rare class is not diluted by many well-balanced ones.

Worst-case gaps need data: with many classes and a small validation split a class has only a
row or two per group, and its true-positive rate gap is often 1 by chance. `check_groups(...,
label_column=)` warns when the validation split has under MIN_GROUP_ROWS rows per group and class;
`accuracy_group_gap` and `demographic_parity_difference` rest on whole groups and settle sooner.

A rate that cannot be measured does not count: a group with no example of a class has no
true-positive rate for it (fairlearn would report 0 there, a gap that is only an artefact of the
sample), and a group made only of that class has no false-positive rate. A class measured in
fewer than two groups has no gap; when no class has one the metric is NaN. Small groups give
noisy rates: `check_groups` warns about them.

Balancing (the `group_balance` space parameter) makes training see groups evenly:
`resample` oversamples the smaller groups (with replacement) to the size of the largest;
`reweight` weights each example's loss by the inverse frequency of its group (mean weight 1),
through `weighted_trainer` and `WeightedCollator`.

Example:
    >>> m = group_metrics([1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0, 0, 1], ["a"] * 4 + ["b"] * 4)
    >>> m["equal_opportunity_difference"], m["predictive_equality_difference"], m["accuracy_group_gap"]
    (0.5, 0.5, 0.5)
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from spaces import ConfigError

from ..settings import Direction

INSTALL = "pip install 'ftsweep[fairness]'"

FAIRNESS_METRICS: dict[str, Direction] = {
    "demographic_parity_difference": "minimize",
    "equal_opportunity_difference": "minimize",
    "predictive_equality_difference": "minimize",
    "accuracy_group_min": "maximize",
    "accuracy_group_gap": "minimize",
}

# The space parameter that balances training by group, and its choices.
BALANCE_PARAM = "group_balance"
BALANCE_CHOICES = ("none", "resample", "reweight")
# The column `reweight` adds to the training data, which WeightedCollator batches and the weighted
# trainer multiplies each example's loss by.
WEIGHT_COLUMN = "sample_weight"
# Below this many validation rows a group's rates move by 10 % or more with a single example.
MIN_GROUP_ROWS = 10
# More distinct values than this in a group column usually means the wrong column (an id, free text).
MAX_GROUPS = 20


# ---------------------------------------------------------------------------------------- metrics


def group_metrics(
    y_true: Iterable[Hashable],
    y_pred: Iterable[Hashable],
    groups: Iterable[Hashable],
    *,
    labels: Iterable[Hashable] | None = None,
    positive_label: Hashable | None = None,
    per_group: bool = False,
) -> dict[str, float]:
    """FAIRNESS_METRICS of predictions against true labels, between the groups of the rows.

    Args:
        y_true: the true class of each row.
        y_pred: the predicted class of each row.
        groups: the group of each row (two groups at least).
        labels: every class the task has (default: those seen in `y_true` and `y_pred`). Pass it:
            it decides binary (two classes) or one-vs-rest (more), which must not change with
            whichever classes one validation sample happens to hold.
        positive_label: score only this class (one-vs-rest); with two classes the default is the
            larger one (1 of 0/1, True of booleans, the later name in sort order).
        per_group: also return each group's accuracy, as `accuracy_group[NAME]`.

    Returns:
        {metric: value}, floats only; a gap no class can measure is NaN (see the module docstring).

    Example:
        >>> m = group_metrics(["x", "y", "z", "x"], ["x", "y", "x", "x"], ["a", "a", "b", "b"], per_group=True)
        >>> m["accuracy_group[a]"], m["accuracy_group[b]"], m["demographic_parity_difference"]
        (1.0, 0.5, 0.5)
    """
    import numpy as np

    y_true, y_pred = np.asarray(list(y_true), dtype=object), np.asarray(list(y_pred), dtype=object)
    groups = list(groups)
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError(f"{len(y_true)} labels, {len(y_pred)} predictions and {len(groups)} groups: "
                         "one of each per row is needed")
    missing = [i for i, g in enumerate(groups) if _is_missing(g)]
    if missing:
        raise ValueError(f"{len(missing)} rows have no group (e.g. row {missing[0]})")
    names = np.asarray([str(g) for g in groups], dtype=object)
    distinct = sorted(set(names))
    if len(distinct) < 2:
        raise ValueError(f"fairness gaps need at least two groups; all {len(names)} rows are in group "
                         f"{distinct[0] if distinct else None!r}")
    classes = _classes(y_true, y_pred, labels)
    if positive_label is None and len(classes) == 2:
        positive_label = classes[1]
    if positive_label is not None and positive_label not in classes:
        raise ValueError(f"positive_label {positive_label!r} is not one of the classes {classes}")
    scored = [positive_label] if positive_label is not None else classes

    if len(scored) == 1:
        by_group = _fairlearn_rates(y_true, y_pred, names, scored[0])
        rates = {name: by_group[name].to_numpy(dtype=float)[:, None] for name in _RATES}
        accuracy = by_group["accuracy"]
    else:
        rates, accuracy = _one_vs_rest_rates(y_true, y_pred, names, scored)
    metrics = {
        "demographic_parity_difference": _worst_gap(rates["selection_rate"]),
        "equal_opportunity_difference": _worst_gap(rates["true_positive_rate"]),
        "predictive_equality_difference": _worst_gap(rates["false_positive_rate"]),
        "accuracy_group_min": float(accuracy.min()),
        "accuracy_group_gap": float(accuracy.max() - accuracy.min()),
    }
    if per_group:
        metrics.update({f"accuracy_group[{name}]": float(value) for name, value in accuracy.items()})
    return metrics


_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate")


def _fairlearn_rates(y_true, y_pred, groups, positive):
    """Per group (a DataFrame row each): fairlearn's selection, true- and false-positive rates of
    `positive`, and accuracy; a rate is NaN where the group has no example it is defined on."""
    import numpy as np
    from sklearn.metrics import accuracy_score

    fairlearn = _fairlearn_metrics()
    MetricFrame = fairlearn.MetricFrame
    selection_rate, true_positive_rate = fairlearn.selection_rate, fairlearn.true_positive_rate
    false_positive_rate = fairlearn.false_positive_rate

    frame = MetricFrame(
        metrics={
            "selection_rate": functools.partial(selection_rate, pos_label=1),
            "true_positive_rate": functools.partial(true_positive_rate, pos_label=1),
            "false_positive_rate": functools.partial(false_positive_rate, pos_label=1),
            "positives": lambda y_true, y_pred: float(np.sum(y_true)),
            "negatives": lambda y_true, y_pred: float(np.sum(1 - np.asarray(y_true))),
        },
        y_true=(y_true == positive).astype(int), y_pred=(y_pred == positive).astype(int), sensitive_features=groups,
    )
    by_group = frame.by_group.copy()
    # fairlearn reports 0 for a rate with nothing to divide by; here it is unmeasured, not zero.
    by_group.loc[by_group["positives"] == 0, "true_positive_rate"] = np.nan
    by_group.loc[by_group["negatives"] == 0, "false_positive_rate"] = np.nan
    by_group["accuracy"] = MetricFrame(metrics=lambda t, p: accuracy_score(list(t), list(p)), y_true=y_true,
                                       y_pred=y_pred, sensitive_features=groups).by_group
    return by_group


def _one_vs_rest_rates(y_true, y_pred, groups, classes):
    """The same rates for every class at once: {rate: array (groups x classes), NaN where undefined},
    and accuracy per group. Calling fairlearn's rate functions per class and group costs ~0.3 s per
    evaluation for 20 classes (sklearn validates every call); counts per group, split by fairlearn's
    MetricFrame, give the same numbers in milliseconds (tests/objectives/data/test_fairness.py compares)."""
    import numpy as np
    import pandas as pd

    MetricFrame = _fairlearn_metrics().MetricFrame

    wanted = np.asarray(classes, dtype=object)

    def counts(y_true, y_pred):
        y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
        is_class, predicted = y_true[:, None] == wanted[None, :], y_pred[:, None] == wanted[None, :]  # rows x classes
        return len(y_true), is_class.sum(0), predicted.sum(0), (is_class & predicted).sum(0), np.mean(y_true == y_pred)

    per_group = MetricFrame(metrics=counts, y_true=y_true, y_pred=y_pred, sensitive_features=groups).by_group
    rows, positives, predicted, true_positives, accuracy = (
        np.array([c[i] for c in per_group], dtype=float) for i in range(5))
    rows = rows[:, None]
    negatives = rows - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = {
            "selection_rate": predicted / rows,
            "true_positive_rate": np.where(positives > 0, true_positives / positives, np.nan),
            "false_positive_rate": np.where(negatives > 0, (predicted - true_positives) / negatives, np.nan),
        }
    return rates, pd.Series(accuracy, index=per_group.index)


def fairlearn_unavailable() -> str | None:
    """None when the fairness metrics can be computed here, else why not and how to install.

    Example:
        >>> reason = fairlearn_unavailable()  # None where `pip install 'ftsweep[fairness]'` was run
        >>> reason is None or INSTALL in reason
        True
    """
    try:
        _fairlearn_metrics()
    except ImportError as exc:
        return str(exc)
    return None


def _fairlearn_metrics():
    try:
        import fairlearn.metrics
    except ImportError as exc:
        raise ImportError(f"fairness metrics need the fairlearn package, which is not installed here ({exc}): "
                          f"{INSTALL}") from exc
    return fairlearn.metrics


def _classes(y_true, y_pred, labels) -> list:
    if labels is not None:
        return list(dict.fromkeys(labels))
    seen = set(y_true) | set(y_pred)
    try:
        return sorted(seen)
    except TypeError:  # mixed types: a stable order all the same
        return sorted(seen, key=repr)


def _worst_gap(rates) -> float:
    """The largest, over classes (columns), of the gap between groups (rows) that have the rate:
    NaN when no class has it in two groups."""
    import numpy as np

    gaps = [float(np.nanmax(col) - np.nanmin(col)) for col in rates.T if np.count_nonzero(~np.isnan(col)) >= 2]
    return max(gaps) if gaps else math.nan


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------------------------------- checks


def check_groups(train: Any, validation: Any, column: str, *, label_column: str | None = None,
                 source: str | None = None) -> list[str]:
    """Check that `column` can split the data into groups; return warnings, raise ConfigError for
    what would make the gaps meaningless.

    Args:
        train, validation: the splits (`datasets.Dataset`, or anything with `column_names` and
            `split[column]`), or each split's group values as a sequence.
        column: the group column (`dataset.group_column`).
        label_column: the class column, when `validation` is a dataset: also warn when there are
            too few validation rows per group and class for per-class rates.
        source: the sweep file, named in errors.

    Errors: the column is missing (the columns present are listed); a row has no group; the data,
    or the validation split where gaps are measured, holds a single group. Warnings: a validation
    group that train lacks (the model never trains on it) and the reverse (its gaps go unmeasured),
    a validation group under MIN_GROUP_ROWS rows (noisy rates), fewer than MIN_GROUP_ROWS rows per
    group and class on average (the worst gap over classes is then mostly chance), more than
    MAX_GROUPS groups.

    Example:
        >>> check_groups(["app", "email"] * 20, ["app", "email", "phone"] * 10, "channel")
        ["group 'phone' has 10 validation rows but none in train: the model never trains on it"]
    """
    train_values = _group_values(train, column, "train", source)
    validation_values = _group_values(validation, column, "validation", source)
    key = "dataset.group_column"
    train_counts, validation_counts = Counter(train_values), Counter(validation_values)
    everything = train_counts + validation_counts
    if len(everything) < 2:
        (only, rows), = everything.items()
        raise ConfigError(
            f"fairness gaps need at least two groups; column '{column}' holds only {only!r} ({rows} rows)",
            source=source, key=key, value=column,
            hint="Fix: choose a column whose values split the rows into groups, or leave group_column unset.",
        )
    if len(validation_counts) < 2:
        (only, rows), = validation_counts.items()
        raise ConfigError(
            f"fairness gaps need at least two groups in the validation split, where they are measured; "
            f"it holds only {only!r} ({rows} rows), train has {len(train_counts)} groups",
            source=source, key=key, value=column,
            hint="Fix: a larger dataset.validation_fraction or max_eval_examples, or a validation_split "
            "that holds every group.",
        )
    warnings = []
    for group, rows in sorted(validation_counts.items(), key=lambda item: str(item[0])):
        if group not in train_counts:
            warnings.append(f"group {group!r} has {rows} validation rows but none in train: "
                            "the model never trains on it")
        if rows < MIN_GROUP_ROWS:
            warnings.append(f"group {group!r} has only {rows} validation rows: its rates, and so the gaps, are noisy")
    for group, rows in sorted(train_counts.items(), key=lambda item: str(item[0])):
        if group not in validation_counts:
            warnings.append(f"group {group!r} has {rows} train rows but none in validation: its gaps are not measured")
    if label_column is not None and hasattr(validation, "column_names") and label_column in validation.column_names:
        classes = len(set(map(str, validation[label_column])))
        per_cell = len(validation_values) / (len(validation_counts) * max(classes, 1))
        if classes > 2 and per_cell < MIN_GROUP_ROWS:
            warnings.append(
                f"about {per_cell:.1f} validation rows per group and class ({len(validation_values)} rows, "
                f"{len(validation_counts)} groups, {classes} classes): equal_opportunity_difference and "
                "predictive_equality_difference, worst gaps over classes, rest on a few rows each and are often "
                "large by chance; evaluate on more rows, or use accuracy_group_gap or demographic_parity_difference")
    if len(everything) > MAX_GROUPS:
        warnings.append(f"column '{column}' has {len(everything)} distinct values; is it really a group "
                        "(not an id or free text)?")
    return warnings


def _group_values(split: Any, column: str, name: str, source: str | None) -> list:
    if hasattr(split, "column_names"):
        if column not in split.column_names:
            raise ConfigError(
                f"the {name} split has no group column '{column}'", source=source,
                key="dataset.group_column", value=column, allowed=f"columns present: {split.column_names}",
                hint="Fix: set dataset.group_column to the column that holds each row's group.",
            )
        values = list(split[column])
    else:
        values = list(split)
    missing = [i for i, v in enumerate(values) if _is_missing(v)]
    if missing:
        raise ConfigError(
            f"{len(missing)} {name} row(s) have no group in column '{column}' (e.g. row {missing[0]} of the split)",
            source=source, key="dataset.group_column", value=column,
            hint="Fix: fill them (e.g. 'unknown', which then forms a group of its own) or drop those rows.",
        )
    bad = next((v for v in values if not isinstance(v, (str, int, bool))), None)
    if bad is not None:
        raise ConfigError(
            f"group values must be strings, integers or booleans; column '{column}' holds a {type(bad).__name__}",
            source=source, key="dataset.group_column", value=bad,
        )
    return values


def check_balance_choices(choices: Iterable[Any], *, group_column: str | None, source: str | None = None) -> None:
    """Refuse `group_balance` values that are not BALANCE_CHOICES, and balancing without a group column.

    Example:
        >>> check_balance_choices(["none", "reweight"], group_column="customer_group")
    """
    key = f"space.params.{BALANCE_PARAM}"
    for choice in choices:
        if choice not in BALANCE_CHOICES:
            raise ConfigError("unknown group balancing", source=source, key=key, value=choice,
                              allowed=list(BALANCE_CHOICES))
    if group_column is None and any(choice != "none" for choice in choices):
        raise ConfigError(
            f"{BALANCE_PARAM} balances training by group, but the dataset has no group column",
            source=source, key=key, value=list(choices),
            hint="Fix: set dataset.group_column, or remove the parameter from the space.",
        )


# ---------------------------------------------------------------------------------------- balancing


def balance_dataset(dataset, choice: str, groups: str | Sequence[Hashable], *, seed: int):
    """The training data a `group_balance` choice trains on.

    Args:
        dataset: a `datasets.Dataset` (e.g. the tokenized training split).
        choice: one of BALANCE_CHOICES: `none` returns `dataset` itself, `resample` returns
            `resample_by_group`, `reweight` returns it with a WEIGHT_COLUMN of `group_weights`
            (train it with `weighted_trainer` and `WeightedCollator`).
        groups: the name of `dataset`'s group column, or the group of each row (in row order).
        seed: the resampling seed (the sweep's: every trial with `resample` sees the same rows).

    Example:
        >>> from datasets import Dataset
        >>> data = Dataset.from_dict({"x": [1, 2, 3], "g": ["a", "a", "b"]})
        >>> list(balance_dataset(data, "reweight", "g", seed=0)[WEIGHT_COLUMN])
        [0.75, 0.75, 1.5]
    """
    if choice == "none":
        return dataset
    if choice == "resample":
        return resample_by_group(dataset, groups, seed)
    if choice == "reweight":
        weights = group_weights(dataset, groups)
        if WEIGHT_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(WEIGHT_COLUMN)
        return dataset.add_column(WEIGHT_COLUMN, weights)
    raise ValueError(f"{BALANCE_PARAM} must be one of {', '.join(BALANCE_CHOICES)}, not {choice!r}")


def resample_by_group(dataset, groups: str | Sequence[Hashable], seed: int):
    """Every row of `dataset` once, then rows of the smaller groups drawn again (with replacement)
    until each group has as many rows as the largest. Deterministic for a seed.

    Training runs a fixed number of steps, so this changes what a step sees, not how long a trial
    takes. Duplicated rows can be memorized: `reweight` is the alternative without duplicates.

    Example:
        >>> from datasets import Dataset
        >>> data = Dataset.from_dict({"g": ["a", "a", "a", "b"]})
        >>> sorted(resample_by_group(data, "g", seed=0)["g"])
        ['a', 'a', 'a', 'b', 'b', 'b']
    """
    values = _row_groups(dataset, groups)
    rows: dict[Hashable, list[int]] = {}
    for i, group in enumerate(values):
        rows.setdefault(group, []).append(i)
    largest = max(len(r) for r in rows.values())
    rng = random.Random(seed)  # its own generator: the global random state is the trainer's
    extra = []
    for group in sorted(rows, key=str):  # a fixed order, so the draw depends on the seed alone
        extra.extend(rng.choices(rows[group], k=largest - len(rows[group])))
    return dataset.select(list(range(len(values))) + extra)


def group_weights(dataset, groups: str | Sequence[Hashable]) -> list[float]:
    """Each row's weight: the inverse of its group's frequency, scaled so the weights average 1.

    A row of group g weighs n / (k * n_g) for n rows in k groups: every group then carries the
    same total weight, and a loss weighted this way has the scale of the plain mean loss.

    Example:
        >>> group_weights(["a", "a", "a", "b"], ["a", "a", "a", "b"])
        [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    values = _row_groups(dataset, groups)
    counts = Counter(values)
    n, k = len(values), len(counts)
    return [n / (k * counts[group]) for group in values]


def _row_groups(dataset, groups: str | Sequence[Hashable]) -> list:
    if isinstance(groups, str):
        if groups not in dataset.column_names:
            raise ValueError(f"no group column '{groups}' (columns: {dataset.column_names})")
        values = list(dataset[groups])
    else:
        values = list(groups)
        if len(values) != len(dataset):
            raise ValueError(f"{len(values)} group values for {len(dataset)} rows")
    if not values:
        raise ValueError("no rows to balance")
    return values


class WeightedCollator:
    """Batches examples with `inner` (e.g. `DataCollatorWithPadding`) and puts their WEIGHT_COLUMN
    values in the batch as a float tensor. Examples without one (evaluation) are batched by `inner`
    unchanged.

    Example:
        >>> import torch
        >>> collate = WeightedCollator(lambda rows: {"x": torch.tensor([r["x"] for r in rows])})
        >>> collate([{"x": 1, "sample_weight": 0.5}, {"x": 2, "sample_weight": 1.5}])["sample_weight"]
        tensor([0.5000, 1.5000])
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]):
        import torch

        weights = [f.get(WEIGHT_COLUMN) for f in features]
        if all(w is None for w in weights):
            return self.inner(features)
        if any(w is None for w in weights):
            raise ValueError(f"some examples of the batch have a {WEIGHT_COLUMN} and some do not")
        batch = self.inner([{k: v for k, v in f.items() if k != WEIGHT_COLUMN} for f in features])
        batch[WEIGHT_COLUMN] = torch.tensor(weights, dtype=torch.float32)
        return batch


@functools.cache
def weighted_trainer(base: type) -> type:
    """A subclass of the Trainer class `base` whose training loss weighs each example by its
    WEIGHT_COLUMN: the mean over the batch of weight x cross-entropy (label smoothing included).

    Single-label classification only (one class id per example). A batch without weights (the
    evaluation) gets `base`'s own loss, so eval_loss stays the plain mean and trials that balance
    differently compare on the same scale. The weight column is kept out of Trainer's
    unused-column removal, which would otherwise drop it before the collator sees it.

    Weights average 1 over the training set, so the weighted mean is an unbiased estimate of the
    group-balanced loss; a per-batch normalization (dividing by the batch's weight sum) would undo
    the reweighting between batches. With gradient accumulation the loss is scaled the way Trainer
    expects a model's own loss to be (by `num_items_in_batch` where Trainer passes it).

    Example:
        >>> from transformers import Trainer
        >>> weighted_trainer(Trainer).__name__
        'WeightedTrainer'
    """
    import torch.nn.functional as F

    class WeightedTrainer(base):
        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if WEIGHT_COLUMN not in self._signature_columns:
                self._signature_columns.append(WEIGHT_COLUMN)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if WEIGHT_COLUMN not in inputs:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs = dict(inputs)
            weights = inputs.pop(WEIGHT_COLUMN)
            labels = inputs.pop("labels")
            if labels.dim() != 1 or labels.is_floating_point():
                raise ValueError("weighted loss needs one class id per example (single-label classification); "
                                 f"got labels of shape {tuple(labels.shape)} and dtype {labels.dtype}")
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            per_example = F.cross_entropy(logits, labels, reduction="none",
                                          label_smoothing=self.args.label_smoothing_factor)
            weighted = per_example * weights.to(per_example.dtype)
            # Trainer divides a loss by the accumulation steps unless it is "scaled for GA": normalized
            # over the whole accumulated batch, as a model that accepts num_items_in_batch does.
            scaled = getattr(self, "loss_is_scaled_for_ga", None)
            if scaled is None:
                scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            if scaled and num_items_in_batch is not None:
                loss = weighted.sum() / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    # num_items_in_batch counts every process's examples, and the gradients are averaged
                    # over processes: as Trainer's own loss does, scale back up by their number.
                    loss = loss * self.accelerator.num_processes
            else:
                loss = weighted.mean()
            return (loss, outputs) if return_outputs else loss

    WeightedTrainer.__qualname__ = WeightedTrainer.__name__
    return WeightedTrainer


__all__ = [
    "BALANCE_CHOICES",
    "BALANCE_PARAM",
    "FAIRNESS_METRICS",
    "WEIGHT_COLUMN",
    "WeightedCollator",
    "balance_dataset",
    "check_balance_choices",
    "check_groups",
    "fairlearn_unavailable",
    "group_metrics",
    "group_weights",
    "resample_by_group",
    "weighted_trainer",
]
