"""Text -> label classification with a sequence-classification head and LoRA.

Metrics (scikit-learn, objectives/_metrics.py): eval_loss, accuracy, and precision, recall and F1
averaged over classes (`*_macro`: every class counts alike, so a rare class done badly shows) and
over examples (`*_micro`: equal to accuracy for single-label classes). All are computed at every
evaluation. The head is created from the base checkpoint once per worker with the sweep's seed, so
every trial starts from the same head.
"""

from __future__ import annotations

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

    def required_columns(self) -> list[str]:
        return [self.data_config.text_column, self.data_config.label_column]

    def _tokenize(self, train, validation, test):
        text_col, label_col = self.required_columns()
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

        return encode_split(train), encode_split(validation), encode_split(test)

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
            return classification_metrics(prediction.label_ids, prediction.predictions.argmax(axis=-1))

        return compute
