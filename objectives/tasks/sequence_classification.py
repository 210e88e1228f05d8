"""Text -> label classification with a sequence-classification head.

Metrics (scikit-learn, objectives/evaluation/metrics.py): eval_loss, accuracy, and precision, recall and F1
averaged over classes (`*_macro`: every class counts alike, so a rare class done badly shows) and
over examples (`*_micro`: equal to accuracy for single-label classes). All are computed at every
evaluation. With `dataset.group_column`, the fairness gaps between groups too (objectives/data/fairness.py),
and the `group_balance` space parameter. The head is created from the base checkpoint once per
worker with the sweep's seed, so every trial starts from the same head.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spaces import ConfigError, finite_values

from ..data.fairness import (
    BALANCE_PARAM,
    FAIRNESS_METRICS,
    WEIGHT_COLUMN,
    WeightedCollator,
    balance_dataset,
    check_balance_choices,
    check_groups,
    fairlearn_unavailable,
    group_metrics,
    weighted_trainer,
)
from ..evaluation.metrics import classification_metrics, uncertainty
from ..settings import Direction, ModelConfig
from .base import DataProfile, Scored, Task, Tokenized

# What transformers names a model class with a trained sequence-classification head (the one this task loads).
CLASSIFIER_SUFFIX = "ForSequenceClassification"


def checkpoint_labels(config) -> list[str] | None:
    """The labels of a checkpoint's trained sequence-classification head, in class-id order, read from its
    transformers config (`architectures`, `id2label`); None when it has no such head (a base encoder, a masked
    or causal LM): loading it for this task then makes a new head of the data's classes.

    Example:
        >>> from transformers import BertConfig
        >>> checkpoint_labels(BertConfig(architectures=["BertForSequenceClassification"], num_labels=3))
        ['LABEL_0', 'LABEL_1', 'LABEL_2']
        >>> checkpoint_labels(BertConfig(architectures=["BertForMaskedLM"])) is None
        True
    """
    if not any(name.endswith(CLASSIFIER_SUFFIX) for name in getattr(config, "architectures", None) or ()):
        return None
    id2label = config.id2label
    return [str(id2label[i]) for i in sorted(id2label)]


def _some(names: Sequence[str], shown: int = 5) -> str:
    """A few names for a message: 'a, b, c, d, e, ... (+3)'."""
    more = f", ... (+{len(names) - shown})" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@dataclass(frozen=True)
class ClassificationState:
    """What sequence_classification derives from the tokenized data of one tokenizer."""

    label2id: dict[str, int]  # class name -> class id (sorted names)
    # Split ("train", "validation", "test") -> the group of every row, in the tokenized rows' order
    # (dataset.group_column); empty without a group column.
    groups: dict[str, list | None] = field(default_factory=dict)


class SequenceClassificationTask(Task):
    """Classify the text column into the label column's classes.

    Example:
        >>> from objectives import DataConfig
        >>> task = SequenceClassificationTask(DataConfig(source="bundled:support-intents-groups",
        ...                                              group_column="customer_group"))
        >>> task.required_columns(), task.metrics["f1_macro"]
        (['text', 'label', 'customer_group'], 'maximize')
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
    prediction_field = "predicted_label"

    @classmethod
    def available_metrics(cls) -> dict[str, Direction]:
        return {**cls.metrics, **FAIRNESS_METRICS}

    @classmethod
    def accepted_params(cls) -> dict[str, str]:
        return {BALANCE_PARAM: "training data balanced by dataset.group_column (none, resample, reweight)"}

    @classmethod
    def check_metric_available(cls, metric: str, *, source: str | None = None, key: str = "metric.name",
                               data=None) -> None:
        """Fairness gaps need a group column and fairlearn."""
        if metric not in FAIRNESS_METRICS:
            return
        if data is not None and data.group_column is None:
            raise ConfigError(f"{metric} compares groups, and the dataset names no group column", source=source,
                              key=key, value=metric, hint="Fix: set dataset.group_column to the column naming "
                              "each example's group (e.g. customer_group), or choose another metric.")
        why = fairlearn_unavailable()
        if why:
            raise ConfigError(why, source=source, key=key, value=metric)

    def check_space(self, space) -> None:
        """`group_balance` choices must be known, and need the dataset's group column; no packing."""
        for knob in ("packing", "padding_free"):
            if getattr(self.budget, knob):
                raise ConfigError(f"budget.{knob} is for causal_lm: a classifier reads one pooled token per "
                                  "example, which flattened batches do not have", source=self.source,
                                  key=f"budget.{knob}", value=True, hint=f"Fix: set budget.{knob}: false.")
        if BALANCE_PARAM in space.names:
            check_balance_choices(finite_values(space.params()[BALANCE_PARAM]),
                                  group_column=self.data.group_column, source=self.source)

    # ---------------------------------------------------------------- columns

    def required_columns(self) -> list[str]:
        group = [self.data.group_column] if self.data.group_column else []
        return [self.data.text_column, self.data.label_column, *group]

    def input_columns(self) -> list[str]:
        return [self.data.text_column]

    def data_profile(self) -> DataProfile:
        return DataProfile(columns=self.required_columns(), text_columns=[self.data.text_column],
                           input_column=self.data.text_column, label_column=self.data.label_column,
                           group_column=self.data.group_column)

    def token_lengths(self, tokenizer, rows) -> list[tuple[int, int]]:
        """As `tokenize` encodes: special tokens included, no prompt part (0)."""
        return [(len(ids), 0) for ids in tokenizer(list(rows[self.data.text_column]))["input_ids"]]

    # ---------------------------------------------------------------- model and data

    def check_model(self, model: ModelConfig, config, splits) -> None:
        """Refuse a checkpoint that is already a classifier of another number of labels than the data's
        classes (transformers cannot load its head for them), unless `model.new_head` replaces that head.
        A checkpoint without a trained classification head gets a new one anyway."""
        labels = checkpoint_labels(config)
        if labels is None or model.new_head:
            return
        classes = self.class_names(splits)
        if len(labels) == len(classes):
            return
        raise ConfigError(
            f"the checkpoint is a classifier of {len(labels)} label(s) ({_some(labels)}) and the data has "
            f"{len(classes)} classes ({_some(classes)}): its head cannot be loaded for them", source=self.source,
            key="model.name_or_path", value=model.name_or_path,
            hint=f"Fix: set model.new_head: true to replace its head by a new one of {len(classes)} labels "
            f"(random weights, trained with the adapter; the rest of the checkpoint is kept), or use a checkpoint "
            f"with {len(classes)} labels, or a base encoder without a head.",
        )

    def class_names(self, splits) -> list[str]:
        """The classes the head predicts, sorted: the label column's values over every split, renamed by
        `dataset.label_map`.

        Example:
            >>> from objectives import DataConfig, load_splits
            >>> task = SequenceClassificationTask(DataConfig(source="bundled:support-intents"))
            >>> classes = task.class_names(load_splits(task.data, seed=0, columns=task.required_columns()))
            >>> len(classes), classes[0]
            (20, 'account_delete')
        """
        return sorted(set(self._label_mapping(self._raw_labels(splits)).values()))

    def _raw_labels(self, splits) -> list[str]:
        """Every distinct value of the label column, as text, over the splits there are."""
        return sorted({str(label) for split in splits if split is not None for label in split[self.data.label_column]})

    def tokenize(self, tokenizer, train, validation, test) -> Tokenized:
        text_col, label_col = self.data.text_column, self.data.label_column
        raw = self._raw_labels((train, validation, test))
        mapping = self._label_mapping(raw)
        labels = sorted(set(mapping.values()))
        if len(labels) < 2:
            raise ConfigError(
                f"column '{label_col}' has {len(labels)} distinct value(s); classification needs at least 2",
                source=self.source, key="dataset.label_column", value=label_col,
            )
        label2id = {label: i for i, label in enumerate(labels)}
        class_of = {value: label2id[mapping[value]] for value in raw}  # raw label -> class id
        max_len, source = self.budget.max_seq_length, self.source

        def encode(batch):
            bad = next((t for t in batch[text_col] if not isinstance(t, str)), None)
            if bad is not None:
                raise ConfigError(
                    f"column '{text_col}' must hold text, found {type(bad).__name__}",
                    source=source, key="dataset.text_column", value=text_col,
                )
            out = tokenizer(batch[text_col], truncation=True, max_length=max_len)
            out["labels"] = [class_of[str(label)] for label in batch[label_col]]
            return out

        def encode_split(split):
            return split.map(encode, batched=True, remove_columns=split.column_names) if split is not None else None

        groups: dict[str, list | None] = {}
        group = self.data.group_column
        if group:  # row order is kept by map: the i-th group is the i-th tokenized example's
            for warning in check_groups(train, validation, group, label_column=label_col, source=self.source):
                warnings.warn(warning, stacklevel=2)
            groups = {"train": list(train[group]), "validation": list(validation[group]),
                      "test": list(test[group]) if test is not None else None}
        return Tokenized(encode_split(train), encode_split(validation), encode_split(test),
                         ClassificationState(label2id, groups))

    def _label_mapping(self, raw: list[str]) -> dict[str, str]:
        """Raw label value -> class name: `dataset.label_map` (several values may share a class), else itself."""
        label_map = self.data.label_map
        if label_map is None:
            return {value: value for value in raw}
        unmapped = [value for value in raw if value not in label_map]
        if unmapped:
            raise ConfigError(
                f"label value(s) {unmapped[:5]} of column '{self.data.label_column}' are not in dataset.label_map",
                source=self.source, key="dataset.label_map", value=unmapped[0], allowed=sorted(label_map),
                hint="Fix: map every label value (several may map to one class), or remove label_map.",
            )
        return {value: str(label_map[value]) for value in raw}

    def load_model(self, path: str, *, state: ClassificationState, new_head: bool = False, **kwargs):
        """The checkpoint with a head of the data's classes; `new_head` (model.new_head): a trained head of
        another size is replaced by a random one, as transformers' `ignore_mismatched_sizes` does."""
        from transformers import AutoModelForSequenceClassification

        id2label = {i: label for label, i in state.label2id.items()}
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(id2label), id2label=id2label, label2id=state.label2id, output_loading_info=True,
            ignore_mismatched_sizes=new_head, **kwargs
        )
        # Layers the checkpoint lacks, or holds in another shape (a replaced head), start random (the head;
        # DeBERTa's pooler, DistilBERT's pre_classifier): the adapter must carry them, or a plain
        # PeftModel.from_pretrained gets other random weights.
        new = [*info["missing_keys"], *(key for key, *_shapes in info.get("mismatched_keys", ()))]
        model.ftsweep_new_modules = sorted({key.rsplit(".", 1)[0] for key in new})
        return model

    def skeleton_model(self, config, state: ClassificationState | None = None):
        from transformers import AutoModelForSequenceClassification

        config.num_labels = max(2, len(state.label2id) if state is not None else 0)
        return AutoModelForSequenceClassification.from_config(config)

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, state: ClassificationState, split: str = "validation"):
        """Classification metrics, and with a group column the fairness gaps between `split`'s groups."""
        groups = state.groups.get(split)
        positive = self.data.positive_label

        def compute(prediction):
            predicted = prediction.predictions.argmax(axis=-1)
            metrics = classification_metrics(prediction.label_ids, predicted)
            if self.data.group_column and groups is not None:
                metrics.update(group_metrics(
                    prediction.label_ids, predicted, groups, labels=list(range(len(state.label2id))),
                    positive_label=state.label2id[positive] if positive in state.label2id else None))
            return metrics

        return compute

    def training_data(self, params: Mapping[str, Any], rows, state: ClassificationState, *, trainer_cls: type,
                      collator, with_validation: bool = False) -> tuple[Any, type, Any]:
        """Balance the training rows by group when the trial's `group_balance` says so."""
        choice = str(params.get(BALANCE_PARAM, "none"))
        if choice == "none":
            return rows, trainer_cls, collator
        groups = state.groups["train"] + (state.groups["validation"] if with_validation else [])
        rows = balance_dataset(rows, choice, groups, seed=self.seed)
        if WEIGHT_COLUMN in rows.column_names:
            trainer_cls, collator = weighted_trainer(trainer_cls), WeightedCollator(collator)
        return rows, trainer_cls, collator

    # ---------------------------------------------------------------- select

    def score_uncertainty(self, model, tokenizer, state: ClassificationState, rows: Sequence[Mapping[str, Any]], *,
                          strategy: str, batch_size: int, max_new_tokens: int | None = None) -> list[Scored]:
        """The uncertainty of the softmax of the class logits of each row's text (tokenized as in
        training: truncated to max_seq_length, padded per batch); the prediction is the top class."""
        texts = [row[self.data.text_column] for row in rows]
        id2label = {i: label for label, i in state.label2id.items()}
        device = next(model.parameters()).device
        scored = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), truncation=True,
                              max_length=self.budget.max_seq_length, padding=True, return_tensors="pt").to(device)
            probs = model(**batch).logits.double().softmax(-1)
            values = uncertainty(probs, strategy)
            for value, label in zip(values.tolist(), probs.argmax(-1).tolist()):
                scored.append(Scored(value, id2label[label]))
        return scored
