"""The objective the sweep engine runs: a task, a worker and the trial loop, composed.

The life of a worker:

1. `Objective(...)`         -- cheap: only settings, nothing loaded.
2. `objective.setup()`      -- expensive, once: tokenizer, base model, tokenized train/eval data.
3. `objective.run_trial()`  -- per trial: a fresh adapter on the *same* base model, trained and
   reported, then removed (objectives/engine/trial.py).

`get_objective(name)` gives the class for a registered task (or your own `Task` subclass); its class
methods check a sweep file before anything loads.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Iterable, Mapping
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

from spaces import ConfigError, finite_values

from ..adapters import peft_methods, regularization
from ..data import augmentation
from ..evaluation.metrics import perplexity
from ..settings import (
    AugmentationSettings,
    DataConfig,
    Direction,
    EvaluationSettings,
    ModelConfig,
    ObjectiveOptions,
    TrainBudget,
)
from ..data.sources import load_splits, local_data_file, resolve_model_path
from ..tasks import TASKS
from ..tasks.base import Task, Tokenized
from . import trial
from .architecture import Architecture
from .arguments import (
    OPTIMIZER_PARAMS,
    TRAINING_ARGUMENT_PARAMS,
    check_quantization,
    torch_dtype,
    training_arguments,
    training_kwargs,
)
from ..evaluation.harness import Harness, is_harness_metric
from ..evaluation.harness import check_metric as harness_direction
from .callback import COST_METRICS
from .trial import Reporter, TrialOptions
from .worker import BASE_MODEL_PARAM, Worker


class Objective:
    """A task's trial function: set up once per worker, then one short PEFT fine-tune per trial.

    Bound to a task by `get_objective(name)` (or `Objective.for_task(TaskClass)`); the class's own
    methods check a sweep file without loading anything.

    Example:
        >>> from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
        >>> cls = get_objective("causal_lm")
        >>> cls.name, cls.check_metric("perplexity"), "lora_r" in cls.accepted_params()
        ('causal_lm', 'minimize', True)
        >>> objective = cls(ModelConfig(name_or_path="bundled:tiny-support-lm"),
        ...                 DataConfig(source="bundled:support-qa", max_train_examples=16, max_eval_examples=8),
        ...                 TrainBudget(max_steps=2, eval_every=2, batch_size=4, max_seq_length=64))
        >>> metrics = objective.run_trial({"learning_rate": 1e-3, "lora_r": 4})
        >>> metrics["steps"], metrics["eval_loss"] > 0
        (2.0, True)
    """

    task_class: ClassVar[type[Task]]
    name: ClassVar[str]
    metrics: ClassVar[dict[str, Direction]]  # the task's metrics, with their natural directions
    peft_task_type: ClassVar[str]

    @classmethod
    def for_task(cls, task_class: type[Task]) -> type[Objective]:
        """The objective class of `task_class` (one per pair: the same class every time)."""
        return _bind(cls, task_class)

    def __reduce__(self):
        """Pickled (to start a distributed trial's rank processes), an objective is what it was made of: it
        loads its models and data again where it is unpickled, and `setup()` there does so.

        Example:
            >>> import pickle
            >>> from objectives import DataConfig, ModelConfig, TrainBudget
            >>> made = get_objective("causal_lm")(ModelConfig(name_or_path="m"), DataConfig(source="d"), TrainBudget())
            >>> again = pickle.loads(pickle.dumps(made))
            >>> type(again) is type(made), again.model_config == made.model_config, again.base_model
            (True, True, None)
        """
        bound = type(self).__dict__.get("_bound")  # a class _bind made: made again by _bind, not imported
        return _remade, (bound or type(self), self._arguments)

    def __init__(
        self,
        model: ModelConfig,
        data: DataConfig,
        budget: TrainBudget,
        *,
        seed: int = 0,
        options: ObjectiveOptions | None = None,
        output_dir: str | Path | None = None,
        source: str | None = None,
        metrics: Iterable[str] | None = None,
        target: tuple[str, Direction] = ("eval_loss", "minimize"),
        augmentation: AugmentationSettings | None = None,
        evaluation: EvaluationSettings | None = None,
    ) -> None:
        # What it was made of: a pickled objective is made again from it, unset-up (see __reduce__).
        self._arguments = dict(model=model, data=data, budget=budget, seed=seed, options=options,
                               output_dir=output_dir, source=source, metrics=metrics, target=target,
                               augmentation=augmentation, evaluation=evaluation)
        # How a trial's processes share the model when it runs as a process group (engine/distributed.py sets
        # it in each rank): "ddp", a copy per process; "fsdp", sharded (FSDP2 through Trainer).
        self.strategy = "ddp"
        self.model_config = model
        self.data_config = data
        self.budget = budget
        self.seed = seed
        self.options = options or ObjectiveOptions()
        self.output_dir = Path(output_dir) if output_dir else None
        self.source = source  # the sweep file, named in error messages
        # Metrics the sweep optimizes or records: costly ones (generation metrics) are computed only when asked.
        self.requested_metrics: set[str] = set(metrics or ())
        # The sweep's (first) optimized metric and its direction: what early stopping within a trial watches.
        self.target = target
        self.augmentation = augmentation  # the sweep's fixed `augmentation:`; the aug_* params are per trial
        # The last evaluation's per-example scores: metric -> {"rows": [...], "scores": [...]} (answer metrics).
        self.per_example: dict[str, dict[str, list]] = {}
        # The sweep's lm-eval tasks (`evaluation:`), loaded at their first run in this worker.
        self.harness = Harness(evaluation, batch_size=budget.eval_batch_size, source=source) if evaluation else None
        self.task = self.task_class(data, options=self.options, budget=budget, source=source, seed=seed)
        self.worker = Worker(self.task, model, seed=seed, max_cached_models=self.options.max_cached_models,
                             augmentation=augmentation, source=source)

    # ---------------------------------------------------------------- checks (no loading)

    @classmethod
    def accepted_params(cls) -> dict[str, str]:
        """Every space parameter name this objective applies, with where it goes."""
        accepted = {k: f"TrainingArguments.{v}" for k, v in TRAINING_ARGUMENT_PARAMS.items()}
        accepted.update(OPTIMIZER_PARAMS)
        accepted.update(peft_methods.accepted_params())
        accepted.update({name: "base model dropout (objectives/adapters/regularization.py)" for name in regularization.DROPOUT_PARAMS})
        accepted[BASE_MODEL_PARAM] = "the model the trial fine-tunes (a path, hub id or bundled:NAME)"
        accepted.update({name: f"training data augmentation: {what}"
                         for name, what in augmentation.AUGMENTATION_PARAMS.items()})
        accepted.update(cls.task_class.accepted_params())
        return accepted

    @classmethod
    def check_params(cls, names: Iterable[str], *, auxiliary: Iterable[str] = (), source: str | None = None) -> None:
        """Reject space parameters this objective cannot apply (before any trial runs).

        `auxiliary` are parameters that only feed derived ones (e.g. `lora_alpha_ratio`): they are
        searched but never applied directly, so they are allowed.
        """
        unknown = sorted(set(names) - set(cls.accepted_params()) - set(auxiliary))
        if unknown:
            raise ConfigError(
                f"objective '{cls.name}' cannot apply space parameter(s) {unknown}",
                source=source, key=f"space.params.{unknown[0]}", value=unknown[0],
                allowed=sorted(cls.accepted_params()),
                hint="Fix: rename it to one of these, remove it, or use it only as an input of a derived parameter.",
            )

    @classmethod
    def available_metrics(cls) -> dict[str, Direction]:
        """Every metric a sweep can optimize, record or constrain: the task's own, plus the costs of
        a trial every objective measures (COST_METRICS)."""
        return {**cls.task_class.available_metrics(), **COST_METRICS}

    @classmethod
    def check_metric(cls, metric: str, *, source: str | None = None, key: str = "metric.name",
                     evaluation: EvaluationSettings | None = None) -> Direction:
        """The metric's natural direction, or a ConfigError listing what the objective reports; an
        `lm_eval:TASK/METRIC` is checked against the sweep's `evaluation:` (objectives/evaluation/harness.py)."""
        if is_harness_metric(metric):
            return harness_direction(metric, evaluation, source=source, key=key)
        available = cls.available_metrics()
        if metric not in available:
            raise ConfigError(
                f"objective '{cls.name}' does not report this metric",
                source=source, key=key, value=metric, allowed=sorted(available),
            )
        return available[metric]

    @classmethod
    def check_metric_available(cls, metric: str, *, source: str | None = None, key: str = "metric.name",
                               data: DataConfig | None = None) -> None:
        """Raise ConfigError when a metric the task knows cannot be computed on this machine or with
        this data (METEOR without NLTK's WordNet data; a fairness gap without a group column).
        Checked when the sweep loads."""
        cls.task_class.check_metric_available(metric, source=source, key=key, data=data)

    def required_columns(self) -> list[str]:
        """Data columns the task reads."""
        return self.task.required_columns()

    def check_sources(self, name_or_path: str | None = None) -> str:
        """Validate that the model (the sweep's, or `name_or_path`) and the data exist (cheap; nothing
        is loaded). Returns the model path."""
        model = self.model_config if name_or_path is None else \
            self.model_config.model_copy(update={"name_or_path": name_or_path})
        model_path = resolve_model_path(model, source=self.source)
        local_data_file(self.data_config, self.source)
        return model_path

    def check_space(self, space) -> None:
        """Everything about `space` that needs the model's architecture, checked before any trial on an
        empty-weights copy of it -- PEFT methods and target modules, and the dropouts it searches, for
        each model `base_model` can take -- then the task's own parameters."""
        for name in self.model_choices(space):
            with self._naming_model(name):
                self.check_sources(name)
                architecture = self.architecture(name)
                architecture.check_peft_methods(space)
                architecture.check_dropouts(space)
                if self.model_config.quantization is not None:
                    check_quantization(self.model_config, architecture.quantized_layers(), source=self.source)
        self.task.check_space(space)

    def check_models(self, space) -> None:
        """Every base model `space` can pick against the data, before any trial (the raw splits and each
        model's config read, no weights): the task refuses one it cannot fine-tune on them, e.g. a classifier
        whose head has another number of labels than the data's classes (`Task.check_model`).

        Example:
            >>> from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
            >>> from spaces import SearchSpace
            >>> space = SearchSpace.from_dict({"params": {"learning_rate": {"type": "fixed", "value": 1e-3}}})
            >>> objective = get_objective("causal_lm")(ModelConfig(name_or_path="bundled:tiny-support-lm",
            ...     new_head=True), DataConfig(source="bundled:support-qa"), TrainBudget())
            >>> try:
            ...     objective.check_models(space)
            ... except ConfigError as error:
            ...     print(error.key, "-", error.message)
            model.new_head - model.new_head replaces a classification head, and causal_lm models have none
        """
        splits = self._raw_splits()
        for name in self.model_choices(space):
            with self._naming_model(name):
                model = self.model_config.model_copy(update={"name_or_path": name})
                self.task.check_model(model, self.architecture(name).config_file(), splits)

    @contextlib.contextmanager
    def _naming_model(self, name: str):
        """A ConfigError raised within names `base_model` choice `name` when it is not the sweep's own model."""
        try:
            yield
        except ConfigError as exc:
            if name != self.model_config.name_or_path and f"base_model {name}" not in exc.message:
                exc.message = f"with base_model {name}: {exc.message}"  # str(exc) reads it anew
            raise

    def model_choices(self, space) -> list[str]:
        """The base models trials of `space` can fine-tune: `base_model`'s choices, else the sweep's model."""
        if BASE_MODEL_PARAM not in space.names:
            return [self.model_config.name_or_path]
        param = space.params()[BASE_MODEL_PARAM]
        choices = finite_values(param)
        if not choices or not all(isinstance(c, str) for c in choices):
            raise ConfigError(
                "base_model must be categorical (or fixed) over model paths or hub ids", source=self.source,
                key=f"space.params.{BASE_MODEL_PARAM}", value=getattr(param, "type", param),
                hint="Fix: {type: categorical, choices: [bundled:tiny-support-lm, ./models/other]}",
            )
        return choices

    def architecture(self, name_or_path: str | None = None) -> Architecture:
        """The architecture of a base model (default: the one trials train now, else the sweep's)."""
        name = name_or_path or self.worker.current or self.model_config.name_or_path
        loaded = self.worker.models.get(name)
        data = self.tokenized_data
        model = self.model_config.model_copy(update={"name_or_path": name})
        return Architecture(model, resolve_model_path(model, source=self.source), self.task, loaded=loaded.model if loaded is not None else None,
                            state=data.state if data is not None else None,
                            target_modules=self.options.target_modules, source=self.source)

    # ---------------------------------------------------------------- set-up (once per worker)

    def setup(self) -> None:
        """Load tokenizer, data and base model once; every trial reuses them."""
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars, once per worker
        if self.options.num_threads:
            torch.set_num_threads(self.options.num_threads)
        self.check_sources()
        self.worker.use(self.model_config.name_or_path)

    @property
    def base_model(self):
        """The base model trials train now (None before `setup`)."""
        loaded = self.worker.loaded
        return loaded.model if loaded is not None else None

    @property
    def tokenizer(self):
        loaded = self.worker.loaded
        return loaded.tokenizer if loaded is not None else None

    @property
    def tokenized_data(self) -> Tokenized | None:
        """The splits as the current model reads them, and the task's state of them."""
        return self.worker.data

    @property
    def train_dataset(self):
        data = self.worker.data
        return data.train if data is not None else None

    @property
    def eval_dataset(self):
        data = self.worker.data
        return data.validation if data is not None else None

    @property
    def test_dataset(self):
        data = self.worker.data
        return data.test if data is not None else None

    def torch_dtype(self):
        """The dtype models load and train in (`model.dtype`; "auto": bfloat16 on a GPU that has it)."""
        return torch_dtype(self.model_config)

    def collator(self):
        """The task's collator for the current tokenizer."""
        return self.task.collator(self.tokenizer)

    # ---------------------------------------------------------------- one trial

    def peft_config(self, params: Mapping[str, Any]):
        """The PEFT config (LoRA, LoHa, IA3, prefix tuning...) a trial's params describe (objectives/adapters/peft_methods.py)."""
        return self.architecture().peft_config(params)

    def training_kwargs(self, params: Mapping[str, Any], output_dir: str) -> dict[str, Any]:
        """The machine-independent keyword arguments of `TrainingArguments` (JSON-serializable):
        the budget, the engine's fixed settings, then the trial's params. Device and precision flags
        are added per machine by `training_arguments`."""
        return training_kwargs(self.budget, params, output_dir, seed=self.seed, target=self.target)

    def training_arguments(self, params: Mapping[str, Any], output_dir: str):
        """`TrainingArguments` for one trial: the budget, fixed engine settings, then the trial's params."""
        return training_arguments(self.training_kwargs(params, output_dir), self.torch_dtype(), strategy=self.strategy)

    def training_data(self, params: Mapping[str, Any], *, train_dataset=None, merge_validation: bool = False):
        """(training rows, Trainer class, collator) of one trial: augmented when its `aug_*` params say
        so, balanced by group when `group_balance` does (objectives/engine/trial.py)."""
        return trial.training_data(self, params, train_dataset=train_dataset, merge_validation=merge_validation)

    def clean_metrics(self, raw: Mapping[str, float]) -> dict[str, float]:
        """Trainer's `eval_*` dict -> the objective's metric names (plus perplexity from eval_loss)."""
        metrics = {}
        for key, value in raw.items():
            # Timings of the evaluation itself (latency_ms is the one that is a metric); an evaluation-only
            # Trainer adds the time it took to prepare the model.
            if key in ("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                       "eval_model_preparation_time"):
                continue
            name = key if key == "eval_loss" else key.removeprefix("eval_")
            metrics[name] = float(value)
        if "eval_loss" in metrics:
            metrics["perplexity"] = perplexity(metrics["eval_loss"])
        return metrics

    def evaluation_extras(self, model, step: int | None = None) -> dict[str, float]:
        """Metrics computed beside Trainer's evaluation (answer metrics, generation metrics from greedy
        decoding); only those in `requested_metrics`, and at `step` only when `task_metrics_due(step)`."""
        extras: dict[str, float] = {}
        self.per_example = {}
        if step is None or self.task_metrics_due(step):
            metrics, self.per_example = self.task.evaluation_details(model, self.tokenizer, self.tokenized_data.state,
                                                                     self.requested_metrics)
            extras.update(metrics)
        if self.harness is not None and (step is None or self.harness_due(step)):
            metrics, per_example = self.harness.evaluate(model, self.tokenizer)
            extras.update(metrics)
            self.per_example.update(per_example)
        return extras

    def harness_due(self, step: int) -> bool:
        """Whether the evaluation at `step` runs the lm-eval tasks: the final one, and every `evaluation.every`-th."""
        return self._due(step, self.harness.settings.every if self.harness is not None else 0)

    def _due(self, step: int, every: int) -> bool:
        """The final evaluation, and every `every`-th one (counted in steps: a resumed trial keeps the rhythm;
        0: the final one only)."""
        return step >= self.budget.max_steps or bool(every and (step // self.budget.eval_every) % every == 0)

    def task_metrics_due(self, step: int) -> bool:
        """Whether the evaluation at `step` computes the task's periodic metrics: every
        `objective.args.task_metrics_every`-th evaluation (counted in steps, so a resumed trial keeps the
        rhythm), and the final one.

        Example:
            >>> from objectives import DataConfig, ModelConfig, ObjectiveOptions, TrainBudget, get_objective
            >>> objective = get_objective("causal_lm")(ModelConfig(name_or_path="m"), DataConfig(source="d"),
            ...     TrainBudget(max_steps=50, eval_every=10), options=ObjectiveOptions(task_metrics_every=2))
            >>> [step for step in (10, 20, 30, 40, 50) if objective.task_metrics_due(step)]
            [20, 40, 50]
        """
        return self._due(step, self.options.task_metrics_every)

    def _raw_splits(self):
        """The splits as loaded, before tokenizing: the worker's once it has read them."""
        return self.worker.splits or load_splits(self.data_config, seed=self.seed, columns=self.required_columns(),
                                                 source=self.source)

    def plan_metrics(self) -> list:
        """What the metrics beyond the loss will score, checked before any trial (a ConfigError when the
        data cannot give them): the task's plan, on the raw splits, and the lm-eval tasks', their data
        loaded; each with `line()` (said at launch) and `resolved_args()`."""
        plans = []
        if self.requested_metrics & self.task_class.periodic_metrics:
            splits = self._raw_splits()
            plan = self.task.plan_metrics(self.requested_metrics, splits.train, splits.validation)
            if plan is not None:
                plans.append(plan)
        if self.harness is not None:
            plans.append(self.harness.plan(self.requested_metrics, max_steps=self.budget.max_steps,
                                           eval_every=self.budget.eval_every))
        return plans

    def run_trial(self, params: Mapping[str, Any], report: Reporter | None = None,
                  options: TrialOptions | None = None) -> dict[str, float]:
        """Fine-tune once with `params`; return the final evaluation's metrics.

        `report(step, metrics)` hears every evaluation: True stops the trial (`optuna.TrialPruned` is raised),
        PAUSE pauses it (`TrialPaused`; with `options.checkpoints`, that step's checkpoint is kept in
        `options.trial_dir`). A NaN/inf loss raises `TrialDiverged`. Whatever happens, the base model is left
        exactly as it was found. `options` (a `TrialOptions`) says where the trial writes, what it trains on,
        whom it tells and what it keeps.

        Checkpoints (engine/checkpoint.py): with `options.checkpoints`, a resumable checkpoint is written in
        `trial_dir` after every evaluation but the last step's, and `options.resume_from` (a checkpoint folder,
        e.g. `latest_checkpoint(trial_dir)`) continues a trial exactly where the checkpoint left it: adapter,
        optimizer, schedule, RNG states and data position.

        Example:
            >>> from objectives import DataConfig, ModelConfig, TrainBudget, TrialOptions, get_objective
            >>> objective = get_objective("causal_lm")(
            ...     ModelConfig(name_or_path="bundled:tiny-support-lm"),
            ...     DataConfig(source="bundled:support-qa", max_train_examples=16, max_eval_examples=8),
            ...     TrainBudget(max_steps=4, eval_every=2, batch_size=4, max_seq_length=64))
            >>> steps = []
            >>> metrics = objective.run_trial({"learning_rate": 1e-3}, lambda step, m: steps.append(step) or False,
            ...                               TrialOptions(on_log=lambda step, logs: None))
            >>> steps, metrics["steps"]
            ([2, 4], 4.0)
        """
        return trial.run_trial(self, params, report, options)

    def evaluate(self, model, dataset, *, split: str = "test") -> dict[str, float]:
        """Evaluate `model` (e.g. a trained PEFT model on this objective's base model) on tokenized
        `dataset` with the task's collator and metrics, those with per-row data reading `split`'s:
        clean metric names (eval_loss, perplexity, accuracy...) plus latency_ms.

        Example:
            >>> from peft import get_peft_model
            >>> from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
            >>> objective = get_objective("sequence_classification")(
            ...     ModelConfig(name_or_path="bundled:tiny-support-lm"),
            ...     DataConfig(source="bundled:support-intents", max_train_examples=16, max_eval_examples=16),
            ...     TrainBudget(max_seq_length=64))
            >>> objective.setup()
            >>> model = get_peft_model(objective.base_model, objective.peft_config({"lora_r": 4}))
            >>> sorted(objective.evaluate(model, objective.test_dataset, split="test"))[:3]
            ['accuracy', 'eval_loss', 'f1_macro']
        """
        from transformers import PrinterCallback, Trainer

        with tempfile.TemporaryDirectory(prefix="ftsweep-eval-") as tmp:
            trainer = Trainer(model=model, args=self.training_arguments({}, tmp), eval_dataset=dataset,
                              data_collator=self.collator(),
                              compute_metrics=self.task.compute_metrics(self.tokenized_data.state, split))
            trainer.remove_callback(PrinterCallback)
            raw = trainer.evaluate()
        metrics = self.clean_metrics(raw)
        if raw.get("eval_samples_per_second"):
            metrics["latency_ms"] = 1000.0 / float(raw["eval_samples_per_second"])
        return metrics

    # ---------------------------------------------------------------- checkpoints and the final fit

    def fit(self, params: Mapping[str, Any], output_dir: str | Path, *, merge_validation: bool = False) -> dict[str, float]:
        """The final fit of a chosen config: train, evaluate on validation and on the held-out test
        split, save the PEFT adapter (loadable with `PeftModel.from_pretrained`) in `output_dir/adapter`.

        With `merge_validation`, the validation examples are trained on too (validation metrics are
        then no longer held-out figures; the test metrics still are).

        Example:
            >>> import tempfile
            >>> from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
            >>> objective = get_objective("causal_lm")(
            ...     ModelConfig(name_or_path="bundled:tiny-support-lm"),
            ...     DataConfig(source="bundled:support-qa", max_train_examples=16, max_eval_examples=8),
            ...     TrainBudget(max_steps=2, eval_every=2, batch_size=4, max_seq_length=64))
            >>> out = Path(tempfile.mkdtemp())
            >>> metrics = objective.fit({"learning_rate": 1e-3}, out)
            >>> "test_loss" in metrics, (out / "adapter" / "adapter_config.json").exists()
            (True, True)
        """
        output_dir = Path(output_dir)
        if self.base_model is None:
            self.setup()

        def save_and_test(model, trainer) -> dict[str, float]:
            model.save_pretrained(output_dir / "adapter")
            if self.test_dataset is None:
                return {}
            # The trial's own Trainer (its arguments: label smoothing included), scoring the test rows
            # with the test split's per-row data.
            trainer.compute_metrics = self.task.compute_metrics(self.tokenized_data.state, "test")
            raw = trainer.evaluate(self.test_dataset, metric_key_prefix="test")
            metrics = {k: float(v) for k, v in raw.items()
                       if k.startswith("test_") and not k.endswith(("_runtime", "_per_second"))}
            if "test_loss" in metrics:
                metrics["test_perplexity"] = perplexity(metrics["test_loss"])
            # Answer and generation metrics on every test row (the validation ones scored a sample).
            wanted = sorted(self.requested_metrics & self.task_class.periodic_metrics)
            if wanted and self.worker.splits is not None and self.worker.splits.test is not None:
                scored = self.task.evaluate_generation(model, self.tokenizer, self.worker.splits.test, wanted)
                metrics.update({f"test_{name}": value for name, value in scored.items()})
            return metrics

        return self.run_trial(params, options=TrialOptions(trial_dir=output_dir, merge_validation=merge_validation,
                                                           after_training=save_and_test))


@functools.cache
def _bind(base: type[Objective], task_class: type[Task]) -> type[Objective]:
    name = task_class.__name__.removesuffix("Task") + "Objective"
    return type(name, (base,), {
        "__doc__": f"The objective of {task_class.__name__} (objectives/engine/objective.py).",
        "__module__": base.__module__,
        "task_class": task_class, "name": task_class.name, "metrics": task_class.metrics,
        "peft_task_type": task_class.peft_task_type, "_bound": (base, task_class),
    })


def _remade(made_from, arguments: dict[str, Any]) -> Objective:
    """`Objective.__reduce__`'s maker: the class (or the (base, task class) pair _bind binds) with its arguments."""
    cls = _bind(*made_from) if isinstance(made_from, tuple) else made_from
    return cls(**arguments)


# ---------------------------------------------------------------- the registry, as objectives


def available_objectives() -> list[str]:
    """The registered task names (`objective:` in a sweep file), sorted."""
    return sorted(TASKS.names())


def get_objective(name: str) -> type[Objective]:
    """The objective class of the task registered under `name`, or of your own as "package.module:ClassName".

    Your own class subclasses `objectives.tasks.Task` (e.g. CausalLMTask), or an objective class
    itself (`get_objective("causal_lm")`, to change what a trial does); it must be importable wherever
    trials run (on a Ray cluster: on every node). Unknown names raise ConfigError.

    Example:
        >>> get_objective("causal_lm").__name__
        'CausalLMObjective'
        >>> get_objective("objectives.tasks.causal_lm:CausalLMTask") is get_objective("causal_lm")
        True
    """
    if name in TASKS or ":" not in name:
        return Objective.for_task(TASKS.get(name))
    module, _, attribute = name.partition(":")
    try:
        found = getattr(import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import objective ({exc})", key="objective.name", value=name,
                          hint="Fix: make the module importable (installed, or on PYTHONPATH) and check the class name.") from None
    if isinstance(found, type) and issubclass(found, Task):
        return Objective.for_task(found)
    if isinstance(found, type) and issubclass(found, Objective) and hasattr(found, "task_class"):
        return found
    raise ConfigError("not a Task subclass", key="objective.name", value=name,
                      hint="Fix: subclass objectives.tasks.Task (or CausalLMTask / SequenceClassificationTask), "
                      "or the class get_objective(NAME) returns.")
