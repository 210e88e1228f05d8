"""What a task is: the interface every fine-tuning task implements, and the values it hands back.

A `Task` says what the engine cannot know on its own: which columns it reads, how rows become
tokens, which model class and collator it trains, which metrics it reports, and how `ftsweep
select`, `ftsweep gate` and the data checks read its data. It holds settings only (the data,
budget and `objective.args` of the sweep); everything loaded -- tokenizers, models, tokenized
data -- lives in the engine (`objectives/engine/worker.py`), and what a task derives from
tokenized data comes back as `Tokenized.state`, never as attributes on the task.

Adding a task: a subclass in a module of its own, registered in `objectives/tasks/__init__.py`;
the contract tests (tests/objectives/tasks/test_task_contract.py) then run it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from spaces import ConfigError

from ..settings import DataConfig, Direction, ModelConfig, ObjectiveOptions, TrainBudget


class Tokenized(NamedTuple):
    """A task's splits as model inputs for one tokenizer, and what the task derived from them.

    `state` is the task's own (a dataclass of the task: the generation sample of causal_lm, the class
    ids and row groups of sequence_classification); the engine keeps it beside the datasets and
    hands it back to the task's methods.
    """

    train: Any
    validation: Any
    test: Any | None
    state: Any = None


@dataclass(frozen=True)
class Scored:
    """One pool row as `ftsweep select` ranks it: how unsure the model is, and what it predicted."""

    uncertainty: float
    prediction: str  # the predicted label, or the greedy response


@dataclass(frozen=True)
class DataProfile:
    """What the data checks (objectives/data/checks.py) need to know about a task's columns.

    Example:
        >>> DataProfile(columns=["text", "label"], text_columns=["text"], input_column="text",
        ...             label_column="label").response_column is None
        True
    """

    columns: list[str]  # every column the task reads, in its order
    text_columns: list[str]  # columns that must hold text in every row
    input_column: str  # what leakage between splits and label conflicts are judged on
    label_column: str | None = None  # a class column: label counts, one-class and conflict checks
    response_column: str | None = None  # prompt -> response tasks: rows whose prompt fills max_seq_length are dropped
    prompt_template: str | None = None  # its text must not already be in the data (formatting checks)
    group_column: str | None = None  # the fairness groups, checked per split
    conversation_format: str | None = None  # chat / instruction data: its rows' turns are checked (data/conversations.py)


class Task(ABC):
    """A fine-tuning task: settings only; the engine loads, tokenizes and trains through it.

    Args:
        data: the sweep's `dataset:` settings (columns, label map, group column).
        options: `objective.args` (prompt template, generation settings).
        budget: the trial budget (max_seq_length, eval_batch_size).
        source: the sweep file, named in errors.
        seed: the sweep seed (resampling by group).

    Example:
        >>> from objectives import DataConfig
        >>> from objectives.tasks import TASKS
        >>> task = TASKS.get("sequence_classification")(DataConfig(source="bundled:support-intents"))
        >>> task.required_columns(), task.metrics["f1_macro"]
        (['text', 'label'], 'maximize')
    """

    name: ClassVar[str]
    metrics: ClassVar[dict[str, Direction]]  # metric -> its natural direction
    peft_task_type: ClassVar[str]  # PEFT's TaskType, e.g. "CAUSAL_LM"
    prediction_field: ClassVar[str] = "prediction"  # the field `ftsweep select` writes the model's guess to
    # PEFT hands prefix tuning's `past_key_values` to this task's models through **kwargs (causal LMs),
    # so their forward need not name the argument.
    prefix_in_kwargs: ClassVar[bool] = False
    # Metrics computed beside Trainer's (decoding, scoring answers): at every `objective.args.task_metrics_every`-th
    # evaluation and the final one only, so a report may lack them.
    periodic_metrics: ClassVar[frozenset[str]] = frozenset()
    # Metrics that score each row on its own and keep the per-row scores (`evaluation_details`): what a paired
    # comparison between trials (the `paired` pruner) needs.
    per_example_metrics: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, data: DataConfig, *, options: ObjectiveOptions | None = None,
                 budget: TrainBudget | None = None, source: str | None = None, seed: int = 0) -> None:
        self.data = data
        self.options = options or ObjectiveOptions()
        self.budget = budget or TrainBudget()
        self.source = source
        self.seed = seed

    # ---------------------------------------------------------------- what the sweep file may say

    @classmethod
    def accepted_params(cls) -> dict[str, str]:
        """Space parameters the task itself applies (besides the engine's), with what they set."""
        return {}

    @classmethod
    def available_metrics(cls) -> dict[str, Direction]:
        """Every metric the task can report (some only with the right data, e.g. fairness gaps)."""
        return dict(cls.metrics)

    @classmethod
    def check_metric_available(cls, metric: str, *, source: str | None = None, key: str = "metric.name",
                               data: DataConfig | None = None) -> None:
        """Raise ConfigError when a metric the task knows cannot be computed on this machine or with
        this data (METEOR without NLTK's WordNet data; a fairness gap without a group column)."""

    def check_space(self, space) -> None:
        """Refuse, before any trial, values of the task's own space parameters that cannot work."""

    def check_model(self, model: ModelConfig, config, splits) -> None:
        """Refuse, before any trial and again as it loads, a base model this task cannot fine-tune on the raw
        `splits`: `model` is its settings, `config` its transformers config (nothing else is loaded). A task
        without a classification head refuses `model.new_head`, which would have nothing to replace."""
        if model.new_head:
            raise ConfigError(f"model.new_head replaces a classification head, and {self.name} models have none",
                              source=self.source, key="model.new_head", value=True,
                              hint="Fix: remove model.new_head (it is for sequence_classification).")

    # ---------------------------------------------------------------- columns

    @abstractmethod
    def required_columns(self) -> list[str]:
        """Every data column the task reads."""

    @abstractmethod
    def input_columns(self) -> list[str]:
        """The columns the model reads as input (what augmentation rewrites and `select` needs in a pool)."""

    def text_columns(self) -> list[str]:
        """The columns holding free text (augmentation may rewrite any of them)."""
        return self.input_columns()

    def data_profile(self) -> DataProfile:
        """What the data checks read of the task (a task without one gets the generic checks only)."""
        columns = self.required_columns()
        return DataProfile(columns=columns, text_columns=[], input_column=columns[0])

    def token_lengths(self, tokenizer, rows) -> list[tuple[int, int]] | None:
        """(full length, prompt length) in tokens of every row, as the task encodes it before
        truncation; None when the task does not say (the length checks are skipped)."""
        return None

    # ---------------------------------------------------------------- model and data

    @abstractmethod
    def tokenize(self, tokenizer, train, validation, test) -> Tokenized:
        """Turn raw (train, validation, test-or-None) datasets into model inputs with `tokenizer`."""

    @abstractmethod
    def load_model(self, path: str, *, state: Any = None, **kwargs):
        """The base model for this task (`from_pretrained`), given the tokenized data's `state`; a task with
        a classification head also takes `new_head=True` (model.new_head), passed only when it is set."""

    @abstractmethod
    def skeleton_model(self, config, state: Any = None):
        """The model built from a transformers config alone (the caller makes its weights empty)."""

    @abstractmethod
    def collator(self, tokenizer):
        """Batches examples (padding)."""

    def compute_metrics(self, state: Any, split: str = "validation") -> Callable | None:
        """`Trainer(compute_metrics=...)` for one split ("validation", "test"): metrics that need its
        per-row data (groups) read that split's; None when eval_loss is all the task needs."""
        return None

    def training_data(self, params: Mapping[str, Any], rows, state: Any, *, trainer_cls: type, collator,
                      with_validation: bool = False) -> tuple[Any, type, Any]:
        """(training rows, Trainer class, collator) of one trial; `state` is the rows' own (augmented
        rows have theirs) and `with_validation` says the validation rows follow the training ones."""
        return rows, trainer_cls, collator

    # ---------------------------------------------------------------- evaluation beyond Trainer's

    def plan_metrics(self, requested, train, validation):
        """Check, on the raw splits and before any trial, that the metrics in `requested` can be computed
        on this data; return what they will score (an object with `line()`, said at launch, and
        `resolved_args()`, the `objective.args` it settled, e.g. inferred choices), or None."""
        return None

    def evaluation_extras(self, model, tokenizer, state: Any, requested: set[str]) -> dict[str, float]:
        """Metrics computed beside Trainer's at every evaluation (only those in `requested` need computing)."""
        return {}

    def evaluation_details(self, model, tokenizer, state: Any,
                           requested: set[str]) -> tuple[dict[str, float], dict[str, dict[str, list]]]:
        """`evaluation_extras`, and the per-example scores behind those that score rows one by one:
        metric -> {"rows": row indices in the split, "scores": one value per row} (none by default)."""
        return self.evaluation_extras(model, tokenizer, state, requested), {}

    def evaluate_generation(self, model, tokenizer, rows, wanted: Sequence[str]) -> dict[str, float]:
        """The generation metrics in `wanted` of `model`'s answers to raw `rows` (gate's test rows)."""
        return {}

    def score_uncertainty(self, model, tokenizer, state: Any, rows: Sequence[Mapping[str, Any]], *,
                          strategy: str, batch_size: int, max_new_tokens: int | None = None) -> list[Scored]:
        """How unsure `model` is about each raw row, under an uncertainty `strategy` (objectives/evaluation/metrics.py)."""
        raise ConfigError(f"select cannot rank {self.name} adapters: the task scores no uncertainty",
                          key="objective.name", value=self.name)
