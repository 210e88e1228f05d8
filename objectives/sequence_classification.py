"""Text -> label classification with a sequence-classification head and LoRA.

Metrics (scikit-learn, objectives/_metrics.py): eval_loss, accuracy, and precision, recall and F1
averaged over classes (`*_macro`: every class counts alike, so a rare class done badly shows) and
over examples (`*_micro`: equal to accuracy for single-label classes). All are computed at every
evaluation. The head is created from the base checkpoint once per worker with the sweep's seed, so
every trial starts from the same head.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

from spaces import ConfigError

from ._base import Direction, Objective
from ._metrics import classification_metrics


class SequenceClassificationObjective(Objective):
    """Classify the text column into the label column's classes.

    Example:
        >>> from objectives import get_objective
        >>> get_objective("sequence_classification").metrics["f1_macro"]
        'maximize'
    """

    name = "sequence_classification"
    metrics: ClassVar[dict[str, Direction]] = {
        "eval_loss": "minimize",
        "accuracy": "maximize",
        "precision_macro": "maximize",
        "recall_macro": "maximize",
        "f1_macro": "maximize",
        "precision_micro": "maximize",
        "recall_micro": "maximize",
        "f1_micro": "maximize",
    }
    peft_task_type = "SEQ_CLS"
    # Raw group of every row, in the tokenized datasets' order (dataset.group_column).
    tokenized_state = ("train_groups", "eval_groups", "test_groups")
    train_groups: list | None = None
    eval_groups: list | None = None
    test_groups: list | None = None

    @classmethod
    def available_metrics(cls) -> dict[str, Direction]:
        from .fairness import FAIRNESS_METRICS

        return {**super().available_metrics(), **FAIRNESS_METRICS}

    @classmethod
    def accepted_params(cls) -> dict[str, str]:
        from .fairness import BALANCE_PARAM

        return {**super().accepted_params(),
                BALANCE_PARAM: "training data balanced by dataset.group_column (none, resample, reweight)"}

    @classmethod
    def check_metric_available(cls, metric: str, *, source: str | None = None, key: str = "metric.name",
                               data=None) -> None:
        """Fairness gaps need a group column and fairlearn."""
        from .fairness import FAIRNESS_METRICS, fairlearn_unavailable

        if metric not in FAIRNESS_METRICS:
            return
        if data is not None and data.group_column is None:
            raise ConfigError(f"{metric} compares groups, and the dataset names no group column", source=source,
                              key=key, value=metric, hint="Fix: set dataset.group_column to the column naming "
                              "each example's group (e.g. customer_group), or choose another metric.")
        why = fairlearn_unavailable()
        if why:
            raise ConfigError(why, source=source, key=key, value=metric)

    def required_columns(self) -> list[str]:
        group = [self.data_config.group_column] if self.data_config.group_column else []
        return [self.data_config.text_column, self.data_config.label_column, *group]

    def check_space(self, space) -> None:
        """The base checks, and `group_balance` choices that need (and fit) the dataset's group column."""
        super().check_space(space)
        from .fairness import BALANCE_PARAM, check_balance_choices
        from .peft_methods import _finite_values

        if BALANCE_PARAM in space.names:
            check_balance_choices(_finite_values(space.params()[BALANCE_PARAM]),
                                  group_column=self.data_config.group_column, source=self.source)

    def _tokenize(self, train, validation, test):
        text_col, label_col = self.required_columns()[:2]
        splits = [split for split in (train, validation, test) if split is not None]
        raw = sorted({str(label) for split in splits for label in split[label_col]})
        mapping = self._label_mapping(raw)
        labels = sorted(set(mapping.values()))
        if len(labels) < 2:
            raise ConfigError(
                f"column '{label_col}' has {len(labels)} distinct value(s); classification needs at least 2",
                source=self.source, key="dataset.label_column", value=label_col,
            )
        self.label2id = label2id = {label: i for i, label in enumerate(labels)}
        class_of = {value: label2id[mapping[value]] for value in raw}  # raw label -> class id
        tok = self.tokenizer
        max_len = self.budget.max_seq_length

        def encode(batch):
            bad = next((t for t in batch[text_col] if not isinstance(t, str)), None)
            if bad is not None:
                raise ConfigError(
                    f"column '{text_col}' must hold text, found {type(bad).__name__}",
                    source=self.source, key="dataset.text_column", value=text_col,
                )
            out = tok(batch[text_col], truncation=True, max_length=max_len)
            out["labels"] = [class_of[str(label)] for label in batch[label_col]]
            return out

        def encode_split(split):
            return split.map(encode, batched=True, remove_columns=split.column_names) if split is not None else None

        group = self.data_config.group_column
        if group:  # row order is kept by map: the i-th group is the i-th tokenized example's
            from .fairness import check_groups

            for warning in check_groups(train, validation, group, label_column=label_col, source=self.source):
                warnings.warn(warning, stacklevel=2)
            self.train_groups, self.eval_groups = list(train[group]), list(validation[group])
            self.test_groups = list(test[group]) if test is not None else None
        return encode_split(train), encode_split(validation), encode_split(test)

    def trial_training_data(self, params, train_dataset):
        """Balance the training data by group when the trial's `group_balance` says so."""
        from .fairness import BALANCE_PARAM, WEIGHT_COLUMN, WeightedCollator, balance_dataset, weighted_trainer

        data, trainer_cls, collator = super().trial_training_data(params, train_dataset)
        choice = str(params.get(BALANCE_PARAM, "none"))
        if choice == "none":
            return data, trainer_cls, collator
        groups = (self.augmented_state or {}).get("train_groups") or self.train_groups  # augmented rows keep theirs
        if len(data) != len(groups):  # fit(merge_validation=True): train then validation rows
            groups = groups + self.eval_groups
        data = balance_dataset(data, choice, groups, seed=self.seed)
        if WEIGHT_COLUMN in data.column_names:
            trainer_cls, collator = weighted_trainer(trainer_cls), WeightedCollator(collator)
        return data, trainer_cls, collator

    def _label_mapping(self, raw: list[str]) -> dict[str, str]:
        """Raw label value -> class name: `dataset.label_map` (several values may share a class), else itself."""
        label_map = self.data_config.label_map
        if label_map is None:
            return {value: value for value in raw}
        unmapped = [value for value in raw if value not in label_map]
        if unmapped:
            raise ConfigError(
                f"label value(s) {unmapped[:5]} of column '{self.data_config.label_column}' are not in dataset.label_map",
                source=self.source, key="dataset.label_map", value=unmapped[0], allowed=sorted(label_map),
                hint="Fix: map every label value (several may map to one class), or remove label_map.",
            )
        return {value: str(label_map[value]) for value in raw}

    def _load_model(self, path: str, **kwargs):
        from transformers import AutoModelForSequenceClassification

        id2label = {i: label for label, i in self.label2id.items()}
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(id2label), id2label=id2label, label2id=self.label2id, **kwargs
        )

    def _skeleton_from_config(self, config):
        from transformers import AutoModelForSequenceClassification

        config.num_labels = max(2, len(getattr(self, "label2id", {}) or {}))
        return AutoModelForSequenceClassification.from_config(config)

    def _collator(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def _compute_metrics(self):
        def compute(prediction):
            predicted = prediction.predictions.argmax(axis=-1)
            metrics = classification_metrics(prediction.label_ids, predicted)
            groups = self.test_groups if self.metric_split == "test" else self.eval_groups
            if self.data_config.group_column and groups is not None:
                from .fairness import group_metrics

                positive = self.data_config.positive_label
                metrics.update(group_metrics(
                    prediction.label_ids, predicted, groups, labels=list(range(len(self.label2id))),
                    positive_label=self.label2id[positive] if positive in self.label2id else None))
            return metrics

        return compute
