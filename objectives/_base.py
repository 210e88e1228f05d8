"""What every objective shares: set up once per worker, then one short PEFT fine-tune per trial.

The life of a worker:

1. `Objective(...)`         — cheap: only settings, nothing loaded.
2. `objective.setup()`      — expensive, once: tokenizer, base model, tokenized train/eval data.
3. `objective.run_trial()`  — per trial: wrap the *same* base model in a fresh LoRA adapter, train
   `budget.max_steps` steps with `transformers.Trainer`, report every evaluation to the backend
   (which may prune), then remove the adapter so the base weights are exactly as they were.

Subclasses (one file each) say what task they are: which model class, how examples become tokens,
which metrics they compute.
"""

from __future__ import annotations

import functools
import gc
import math
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from spaces import ConfigError

from . import peft_methods, regularization
from ._config import DataConfig, ModelConfig, ObjectiveOptions, TrainBudget
from ._sources import load_splits, resolve_model_path

# Raised by transformers 5.x's own internals (Trainer, get_peft_model), not by anything a user can change.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

Direction = Literal["minimize", "maximize"]
# `report(step, metrics)` returns True when the backend wants the trial stopped (pruned).
Reporter = Callable[[int, dict[str, float]], bool]

# Space parameter name -> the TrainingArguments field it sets. Everything here is a hyperparameter of
# the optimisation itself; fields the engine owns (output_dir, max_steps, eval_steps...) are not.
TRAINING_ARGUMENT_PARAMS: dict[str, str] = {
    "learning_rate": "learning_rate",
    "lr_scheduler_type": "lr_scheduler_type",
    # transformers >= 5 takes a warmup *ratio* as a float below 1 in `warmup_steps`; we keep the
    # name users know from Optuna/HF examples.
    "warmup_ratio": "warmup_steps",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "label_smoothing_factor": "label_smoothing_factor",
    "adam_beta1": "adam_beta1",
    "adam_beta2": "adam_beta2",
    "adam_epsilon": "adam_epsilon",
    "optim": "optim",
    "batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
}
# Space parameter name -> the peft.LoraConfig field it sets.
# Short names in spaces -> module names per architecture. 'all_linear' is PEFT's own shortcut.
_TARGET_MODULES: dict[str, dict[str, Any]] = {
    "attention_qv": {"default": ["q_proj", "v_proj"], "gpt2": ["c_attn"]},
    "attention": {"default": ["q_proj", "k_proj", "v_proj", "o_proj"], "gpt2": ["c_attn", "c_proj"]},
    "all_linear": {"default": "all-linear"},
}


# What a trial costs, measured by every objective at every evaluation: natural targets of a second
# objective or a constraint ("maximize F1, minimize latency").
COST_METRICS: dict[str, Direction] = {
    "trainable_params": "minimize",  # the adapter's size: parameters with requires_grad
    "peak_memory_mb": "minimize",  # GPU: torch.cuda.max_memory_allocated; CPU: peak resident memory (sampled)
    "latency_ms": "minimize",  # evaluation time per example (forward pass, batched)
}

CHECKPOINT_STATE = "ftsweep_checkpoint.json"  # next to the adapter files: the step they are from


def perplexity(loss: float) -> float:
    """exp(loss), as inf once it would overflow a float (a loss past ~700; 50 is already meaningless)."""
    return math.exp(loss) if loss < 50 else float("inf")


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial fails, and retrying the same params would too."""


class Objective(ABC):
    """Base class of trial functions. See the module docstring for the lifecycle.

    Example:
        >>> from objectives import get_objective
        >>> cls = get_objective("causal_lm")
        >>> sorted(cls.metrics)[:3]
        ['bleu', 'eval_loss', 'meteor']
    """

    name: ClassVar[str]
    metrics: ClassVar[dict[str, Direction]]  # metric -> its natural direction
    peft_task_type: ClassVar[str]
    # Attributes `_tokenize` sets besides the datasets that depend on the tokenizer (kept per tokenizer).
    tokenized_state: ClassVar[tuple[str, ...]] = ()

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
        augmentation=None,
    ) -> None:
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
        self.base_model = None
        self.tokenizer = None
        self.train_dataset = None
        self.eval_dataset = None
        self.test_dataset = None
        # `base_model` searched in the space: every model loaded so far (least recently used first), and the
        # tokenized data per tokenizer, so switching models neither reloads nor re-tokenizes.
        self.loaded_models: OrderedDict[str, _LoadedModel] = OrderedDict()
        self.tokenized: dict[str, tuple] = {}
        self.current_model: str | None = None
        self.metric_split = "validation"  # which split compute_metrics is scoring (fit() also scores test)
        # The sweep's fixed `augmentation:` settings (objectives/augmentation.py); the aug_* params are per trial.
        self.augmentation = augmentation
        self._augmenter = None
        self._augmented: OrderedDict[tuple, tuple] = OrderedDict()  # tokenized augmented training splits
        self.augmented_state: dict[str, Any] | None = None  # the trial's `tokenized_state` for augmented rows

    # ---------------------------------------------------------------- checks (no loading)

    @classmethod
    def accepted_params(cls) -> dict[str, str]:
        """Every space parameter name this objective applies, with where it goes."""
        accepted = {k: f"TrainingArguments.{v}" for k, v in TRAINING_ARGUMENT_PARAMS.items()}
        accepted.update(peft_methods.accepted_params())
        accepted.update({name: "base model dropout (objectives/regularization.py)" for name in regularization.DROPOUT_PARAMS})
        accepted[BASE_MODEL_PARAM] = "the model the trial fine-tunes (a path, hub id or bundled:NAME)"
        from .augmentation import AUGMENTATION_PARAMS

        accepted.update({name: f"training data augmentation: {what}" for name, what in AUGMENTATION_PARAMS.items()})
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
        return {**cls.metrics, **COST_METRICS}

    @classmethod
    def check_metric(cls, metric: str, *, source: str | None = None, key: str = "metric.name") -> Direction:
        """The metric's natural direction, or a ConfigError listing what the objective reports."""
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

    def evaluation_extras(self, model) -> dict[str, float]:
        """Metrics computed beside Trainer's evaluation at every evaluation (e.g. generation
        metrics from greedy decoding); only those in `requested_metrics` need computing."""
        return {}

    # ---------------------------------------------------------------- set-up (once per worker)

    @abstractmethod
    def required_columns(self) -> list[str]:
        """Data columns this task reads."""

    @abstractmethod
    def _tokenize(self, train, validation, test) -> tuple[Any, Any, Any]:
        """Turn raw (train, validation, test-or-None) datasets into model inputs."""

    @abstractmethod
    def _load_model(self, path: str, **kwargs):
        """Load the base model for this task."""

    @abstractmethod
    def _collator(self):
        """Batches examples (padding)."""

    def _compute_metrics(self):
        """`Trainer(compute_metrics=...)`, or None when eval_loss is all the task needs."""
        return None

    def check_sources(self) -> str:
        """Validate that model and data exist (cheap; nothing is loaded). Returns the model path."""
        model_path = resolve_model_path(self.model_config, source=self.source)
        from ._sources import _local_data_file

        _local_data_file(self.data_config, self.source)
        return model_path

    def setup(self) -> None:
        """Load tokenizer, data and base model once; every trial reuses them."""
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars, once per worker
        if self.options.num_threads:
            torch.set_num_threads(self.options.num_threads)
        self.check_sources()
        self._splits = None  # the raw splits, read once for every tokenizer
        self.use_model(self.model_config.name_or_path)

    def use_model(self, name_or_path: str) -> None:
        """Make `name_or_path` the base model (and tokenizer, and tokenized data) trials train.

        Each model is loaded once per worker and kept while memory allows (the least recently used is
        dropped first, see `_make_room`); data is tokenized once per distinct tokenizer, so models that
        share one share the datasets. The sweep's `model:` settings (revision, dtype, trust_remote_code)
        apply to every model.
        """
        import transformers

        if name_or_path == self.current_model:
            return
        loaded = self.loaded_models.get(name_or_path)
        if loaded is None:
            config = self.model_config.model_copy(update={"name_or_path": name_or_path})
            path = resolve_model_path(config, source=self.source)
            self._make_room(path)
            tokenizer = self._load(transformers.AutoTokenizer.from_pretrained, path, config=config)
            if tokenizer.pad_token is None:
                # Padding only needs *a* token id: its positions are masked out of attention and loss.
                tokenizer.pad_token = tokenizer.eos_token
            key = tokenizer_fingerprint(tokenizer)
            if key not in self.tokenized:
                self.tokenizer = tokenizer
                if self._splits is None:
                    self._splits = load_splits(self.data_config, seed=self.seed, columns=self.required_columns(),
                                               source=self.source)
                datasets = self._tokenize(*self._splits)
                self.tokenized[key] = (*datasets, self._tokenized_attrs())
            transformers.set_seed(self.seed)  # the classification head is initialised here: same for every trial
            model = self._load(self._load_model, path, config=config, dtype=self.torch_dtype())
            if getattr(model.config, "pad_token_id", None) is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            model.eval()
            loaded = self.loaded_models[name_or_path] = _LoadedModel(model, tokenizer, key)
            # What set-up loaded lives as long as the worker. Freezing it out of the garbage collector's
            # generations spares every later full collection (ours after each trial, accelerate's at each
            # Trainer.train()) a walk over ~0.5M objects: ~0.4 s per trial on a 0.5B model (docs/benchmarks.md).
            gc.collect()
            gc.freeze()
        self.loaded_models.move_to_end(name_or_path)
        self.base_model, self.tokenizer = loaded.model, loaded.tokenizer
        self.train_dataset, self.eval_dataset, self.test_dataset, state = self.tokenized[loaded.tokenizer_key]
        for attr, value in state.items():
            setattr(self, attr, value)
        self.current_model = name_or_path

    def _tokenized_attrs(self) -> dict[str, Any]:
        """The `tokenized_state` attributes the last `_tokenize` set."""
        return {attr: getattr(self, attr) for attr in self.tokenized_state}

    def _make_room(self, path: str) -> None:
        """Drop cached models (least recently used first) until the next one fits: at most
        `options.max_cached_models`, and its weights' size must leave some memory free."""
        import torch

        need = _weights_bytes(path)
        while self.loaded_models:
            over_count = self.options.max_cached_models is not None and \
                len(self.loaded_models) >= self.options.max_cached_models
            if torch.cuda.is_available():
                free = torch.cuda.mem_get_info()[0]
            else:
                import psutil

                free = psutil.virtual_memory().available
            # Twice the weights: loading briefly holds a second copy, and training needs room of its own.
            if not over_count and free > 2 * need:
                return
            name, dropped = self.loaded_models.popitem(last=False)
            if self.current_model == name:
                self.current_model = self.base_model = None
            del dropped
            gc.unfreeze()  # set-up froze the model's objects; collect them with the rest, then freeze again
            gc.collect()
            gc.freeze()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _load(self, loader, path: str, *, config: ModelConfig | None = None, **kwargs):
        config = config or self.model_config
        try:
            return loader(path, revision=config.revision, trust_remote_code=config.trust_remote_code, **kwargs)
        except OSError as exc:
            raise ConfigError(
                f"could not load model ({str(exc).splitlines()[0]})",
                source=self.source, key="model.name_or_path", value=config.name_or_path,
                hint="Fix: use a local save_pretrained directory, or make sure this machine can reach the hub "
                "(HF_HUB_OFFLINE unset) and the id is right.",
            ) from exc

    def torch_dtype(self):
        import torch

        if self.model_config.dtype != "auto":
            return getattr(torch, self.model_config.dtype)
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    # ---------------------------------------------------------------- one trial

    def peft_config(self, params: Mapping[str, Any]):
        """The PEFT config (LoRA, LoHa, IA3, prefix tuning...) a trial's params describe (objectives/peft_methods.py)."""
        return peft_methods.build_config(params, self, resolve_targets=self.target_modules)

    def check_space(self, space) -> None:
        """Everything about `space` that needs the model's architecture, checked before any trial on an
        empty-weights copy of it: PEFT methods and target modules, and the dropouts it searches; for each
        model `base_model` can take."""
        for name in self.model_choices(space):
            with self._checking(name):
                self.check_peft_methods(space)
                self.check_dropouts(space)

    def model_choices(self, space) -> list[str]:
        """The base models trials of `space` can fine-tune: `base_model`'s choices, else the sweep's model."""
        if BASE_MODEL_PARAM not in space.names:
            return [self.model_config.name_or_path]
        param = space.params()[BASE_MODEL_PARAM]
        choices = peft_methods._finite_values(param)
        if not choices or not all(isinstance(c, str) for c in choices):
            raise ConfigError(
                "base_model must be categorical (or fixed) over model paths or hub ids", source=self.source,
                key=f"space.params.{BASE_MODEL_PARAM}", value=getattr(param, "type", param),
                hint="Fix: {type: categorical, choices: [bundled:tiny-support-lm, ./models/other]}",
            )
        return choices

    @contextmanager
    def _checking(self, name_or_path: str):
        """Run the load-time checks against another model of the space (its config alone is read)."""
        saved = self.model_config, self.base_model
        self.model_config = self.model_config.model_copy(update={"name_or_path": name_or_path})
        if name_or_path != self.current_model:
            self.base_model = None  # model_type() must read this model's config, not the loaded one
        try:
            yield
        except ConfigError as exc:
            if name_or_path != saved[0].name_or_path and f"base_model {name_or_path}" not in exc.message:
                exc.message = f"with base_model {name_or_path}: {exc.message}"  # str(exc) reads it anew
            raise
        finally:
            self.model_config, self.base_model = saved

    def check_dropouts(self, space) -> None:
        """Refuse `attention_dropout` / `hidden_dropout` on a model that has no such dropout to set."""
        asked = [name for name in regularization.DROPOUT_PARAMS if name in space.names]
        if not asked:
            return
        exposed = regularization.exposed_dropouts(self.skeleton_model())
        for name in asked:
            if name not in exposed:
                raise ConfigError(
                    f"this {self.model_type()} model exposes no {name.replace('_', ' ')} (it has "
                    f"{', '.join(sorted(exposed)) or 'no dropout at all'})", source=self.source,
                    key=f"space.params.{name}", value=name,
                    hint="Fix: remove it from the space; regularize with lora_dropout, weight_decay or "
                    "label_smoothing_factor instead.",
                )

    def check_peft_methods(self, space) -> None:
        """Refuse, before any trial, a method or target module that PEFT rejects for this model and task.

        Each searched method (with each `target_modules` choice) is applied to an empty-weights copy
        of the model built from its config alone: nothing is loaded, so this is cheap at any size.
        """
        import peft

        config = self.model_config_file()  # once: each check below needs a fresh skeleton of it
        methods = peft_methods.searched_methods(space, source=self.source)
        for method in methods:
            unfit = peft_methods.PEFT_METHODS[method].unfit
            reason = unfit(self, self.skeleton_model(config)) if unfit is not None else None
            if reason:
                raise ConfigError(
                    f"peft_method {method} cannot train this {self.model_type()} model for the {self.name} task: "
                    f"{reason}", source=self.source, key=peft_methods.PEFT_METHOD_KEY, value=method,
                    hint="Fix: leave this method out of the space, or use a model / transformers version it fits.",
                )
            for params in peft_methods.representative_params(space, method):
                try:
                    peft.get_peft_model(self.skeleton_model(config), self.peft_config(params))
                except (ValueError, TypeError, KeyError, NotImplementedError, AttributeError) as exc:
                    what = ", ".join(f"{k}={v}" for k, v in params.items())
                    raise ConfigError(
                        f"PEFT rejects {what} for this {self.model_type()} model and the {self.name} task "
                        f"({' '.join(str(exc).split())[:300]})",
                        source=self.source, key=peft_methods.PEFT_METHOD_KEY, value=method,
                        hint="Fix: leave this method (or target_modules choice) out of the space, or pick a "
                        "model it supports.",
                    ) from None

    def model_config_file(self):
        """The base model's `transformers` config, read alone (checks model and data paths first)."""
        from transformers import AutoConfig

        return self._load(AutoConfig.from_pretrained, self.check_sources())

    def skeleton_model(self, config=None):
        """The base model's architecture with empty (meta) weights, built from its config alone."""
        from accelerate import init_empty_weights

        with init_empty_weights():
            return self._skeleton_from_config(config if config is not None else self.model_config_file())

    def _skeleton_from_config(self, config):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(config)

    def target_modules(self, choice: Any) -> Any:
        """Map a short name ('attention_qv', 'attention', 'all_linear') or 'a,b' to LoRA target modules."""
        if isinstance(choice, (list, tuple)):
            return list(choice)
        if choice in _TARGET_MODULES:
            table = _TARGET_MODULES[choice]
            model_type = self.model_type()
            return table.get(model_type, table["default"])
        return [m.strip() for m in str(choice).split(",") if m.strip()]

    def model_type(self) -> str:
        """`config.model_type` of the base model, read from its config alone when it is not loaded."""
        if self.base_model is not None:
            return getattr(self.base_model.config, "model_type", "default")
        return getattr(self.model_config_file(), "model_type", "default")

    def training_arguments(self, params: Mapping[str, Any], output_dir: str):
        """`TrainingArguments` for one trial: the budget, fixed engine settings, then the trial's params."""
        import torch
        from transformers import TrainingArguments

        on_gpu = torch.cuda.is_available()
        dtype = self.torch_dtype()
        kwargs = self.training_kwargs(params, output_dir)
        kwargs.update(
            use_cpu=not on_gpu,
            bf16=on_gpu and dtype == torch.bfloat16,
            fp16=on_gpu and dtype == torch.float16,
        )
        return TrainingArguments(**kwargs)

    def training_kwargs(self, params: Mapping[str, Any], output_dir: str) -> dict[str, Any]:
        """The machine-independent keyword arguments of `TrainingArguments` (JSON-serializable):
        the budget, the engine's fixed settings, then the trial's params. Device and precision flags
        are added per machine by `training_arguments`."""
        kwargs: dict[str, Any] = dict(
            output_dir=output_dir,
            max_steps=self.budget.max_steps,
            per_device_train_batch_size=self.budget.batch_size,
            per_device_eval_batch_size=self.budget.eval_batch_size,
            gradient_accumulation_steps=self.budget.gradient_accumulation_steps,
            eval_strategy="steps",
            eval_steps=self.budget.eval_every,
            logging_strategy="steps",
            # Training loss is logged on steps that divide eval_every, so each evaluation sees the mean
            # training loss of exactly the steps since the previous one (the train-validation gap).
            logging_steps=max(d for d in range(1, min(self.budget.eval_every, 5) + 1) if self.budget.eval_every % d == 0),
            # Keep NaN visible: the default filter would replace a NaN loss with the running mean.
            logging_nan_inf_filter=False,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=self.seed,
            data_seed=self.seed,
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        if self.budget.early_stopping_patience is not None:
            # What transformers' EarlyStoppingCallback watches (no checkpoint is kept: save_strategy "no").
            metric, direction = self.target
            kwargs.update(metric_for_best_model=metric, greater_is_better=direction == "maximize")
        for name, value in params.items():
            if name in TRAINING_ARGUMENT_PARAMS:
                kwargs[TRAINING_ARGUMENT_PARAMS[name]] = value
        return kwargs

    def clean_metrics(self, raw: Mapping[str, float]) -> dict[str, float]:
        """Trainer's `eval_*` dict -> the objective's metric names (plus perplexity from eval_loss)."""
        metrics = {}
        for key, value in raw.items():
            if key in ("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"):
                continue
            name = key if key == "eval_loss" else key.removeprefix("eval_")
            metrics[name] = float(value)
        if "eval_loss" in metrics:
            loss = metrics["eval_loss"]
            metrics["perplexity"] = perplexity(loss)
        return metrics

    def run_trial(
        self,
        params: Mapping[str, Any],
        report: Reporter | None = None,
        trial_dir: str | Path | None = None,
        *,
        train_dataset=None,
        after_training: Callable[[Any, Any], dict[str, float]] | None = None,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        on_evaluate: Callable[[int, Any], None] | None = None,
        resume_from: str | Path | None = None,
    ) -> dict[str, float]:
        """Fine-tune once with `params`; return the final evaluation's metrics.

        Raises `optuna.TrialPruned` when `report` asked to stop, `TrialDiverged` on a NaN/inf loss.
        Whatever happens, the base model is left exactly as it was found. `train_dataset` replaces
        the training split; `after_training(peft_model, trainer)` runs before the adapter is removed
        (to save it, or evaluate elsewhere) and its metrics are merged into the result. `on_log(step,
        logs)` receives training logs (train_loss, learning_rate, grad_norm) for trackers.

        Example:
            >>> metrics = objective.run_trial({"learning_rate": 1e-3, "lora_r": 8})  # doctest: +SKIP
            >>> metrics["eval_loss"]  # doctest: +SKIP
            2.31
        """
        import optuna
        import torch
        from peft import get_peft_model
        from transformers import PrinterCallback, set_seed

        if self.base_model is None:
            self.setup()
        if BASE_MODEL_PARAM in params:
            self.use_model(str(params[BASE_MODEL_PARAM]))
        # What the sweep keeps alive between trials (the study, the sampler, caches the last trial
        # filled) joins set-up's frozen objects, so this trial's collections -- run_trial's own and
        # accelerate's at every Trainer.train() -- walk only what this trial creates. Collected
        # first, so no garbage (e.g. a finished tracker run) is frozen for good.
        gc.collect()
        gc.freeze()
        base = self.base_model
        _check_pristine(base)
        saved_requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
        had_peft_config = hasattr(base, "peft_config")
        peft_config = self.peft_config(params)
        set_seed(self.seed)  # adapter init and data order depend only on the sweep seed, not on trial order
        restore_dropouts = regularization.apply_dropouts(base, params)
        try:
            model = get_peft_model(base, peft_config)
        except BaseException:
            restore_dropouts()
            raise
        from ._callback import ReportingCallback

        tmp = trainer = None
        try:
            start_step = self.load_checkpoint(model, resume_from) if resume_from is not None else 0
            callback = ReportingCallback(self, report, on_log, on_evaluate=on_evaluate, step_offset=start_step)
            if trial_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="ftsweep-trial-")
                trial_dir = tmp.name
            args = self.training_arguments(params, str(trial_dir))
            if start_step:
                # The rest of the budget; a new data order, so a resumed trial does not re-see its first batches.
                args.max_steps = max(1, self.budget.max_steps - start_step)
                args.data_seed = self.seed + start_step
            train, trainer_cls, collator = self.trial_training_data(
                params, self.train_dataset if train_dataset is None else train_dataset)
            trainer = trainer_cls(
                model=model,
                args=args,
                train_dataset=train,
                eval_dataset=self.eval_dataset,
                data_collator=collator,
                compute_metrics=self._compute_metrics(),
                callbacks=[callback, *self._early_stopping()],  # ours first: it adds the metrics early stopping reads
            )
            # With tqdm disabled, Trainer prints every log dict; the backend's progress display says enough.
            trainer.remove_callback(PrinterCallback)
            train_loss = None  # resumed from the final step: nothing left to train
            if start_step < self.budget.max_steps:
                train_loss = float(trainer.train().training_loss)
            if callback.diverged:
                raise TrialDiverged(callback.diverged)
            if callback.pruned_at is not None:
                raise optuna.TrialPruned(f"pruned at step {callback.pruned_at}")
            last_step = start_step + trainer.state.global_step
            if not callback.history or callback.history[-1][0] != last_step:
                # max_steps is not a multiple of eval_every: evaluate the final weights too.
                trainer.evaluate()
                if callback.diverged:
                    raise TrialDiverged(callback.diverged)
            final = dict(callback.history[-1][1])
            if train_loss is not None:
                final["train_loss"] = train_loss
            final["steps"] = float(last_step)
            if last_step < self.budget.max_steps and callback.pruned_at is None:
                final["stopped_early_at"] = float(last_step)  # no improvement for `patience` evaluations
            if after_training is not None:
                callback.report = None  # later evaluations are not the sweep's to prune on
                final.update(after_training(model, trainer))
            return final
        finally:
            _restore_modules_to_save(model)
            _remove_adapter(model, peft_config)
            restore_dropouts()
            for name, p in base.named_parameters():
                p.requires_grad_(saved_requires_grad.get(name, p.requires_grad))
            if hasattr(base, "peft_config") and not had_peft_config:
                del base.peft_config
            base.eval()
            # Drop the Trainer (optimizer state) and the wrapper now: on an exception, the traceback keeps
            # this frame, and its locals, alive until the backend has recorded the failure.
            trainer = None
            del model
            if tmp is not None:
                tmp.cleanup()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def trial_training_data(self, params: Mapping[str, Any], train_dataset):
        """(training data, Trainer class, collator) for one trial: the training split, augmented when
        the trial's `aug_*` params say so; subclasses may change them further (balancing by group)."""
        from . import augmentation

        self.augmented_state = None
        active = augmentation.active_params(params)
        if active:
            merged = train_dataset is not self.train_dataset  # fit(merge_validation=True)
            train_dataset = self._augmented_train(params, active, merged=merged)
        return train_dataset, _sweep_trainer_class(), self._collator()

    def _augmented_train(self, params: Mapping[str, Any], active: Mapping[str, Any], *, merged: bool):
        """The raw training split augmented (only it: validation and test never change), tokenized as
        the originals are; cached per (tokenizer, augmentation params)."""
        from . import augmentation

        # The current model's tokenizer key, fingerprinted once when it loaded (hashing a large
        # tokenizer's rules again for every trial would cost more than the lookup it serves).
        key = (self.loaded_models[self.current_model].tokenizer_key, tuple(sorted(active.items())))
        if key not in self._augmented:
            if self._augmenter is None:
                self._augmenter = augmentation.Augmenter(self.augmentation, seed=self.seed, source=self.source)
            raw_train, raw_validation, _ = self._splits
            columns = (self.augmentation.columns if self.augmentation is not None and self.augmentation.columns
                       else augmentation.default_columns(self.name, self.data_config))
            rows = self._augmenter.augment(raw_train, params, columns)
            saved = self._tokenized_attrs()
            try:
                tokenized = self._tokenize(rows, raw_validation, None)[0]
                state = self._tokenized_attrs()
            finally:
                for attr, value in saved.items():
                    setattr(self, attr, value)
            self._augmented[key] = (tokenized, state)
            while len(self._augmented) > 4:
                self._augmented.popitem(last=False)
        self._augmented.move_to_end(key)
        tokenized, self.augmented_state = self._augmented[key]
        if merged:
            from datasets import concatenate_datasets

            tokenized = concatenate_datasets([tokenized, self.eval_dataset])
        return tokenized

    def _early_stopping(self) -> list:
        """transformers' EarlyStoppingCallback when the budget asks for patience, else nothing."""
        if self.budget.early_stopping_patience is None:
            return []
        from transformers import EarlyStoppingCallback

        return [EarlyStoppingCallback(early_stopping_patience=self.budget.early_stopping_patience,
                                      early_stopping_threshold=self.budget.early_stopping_threshold)]

    def save_checkpoint(self, model, step: int, directory: str | Path, *, params: Mapping[str, Any] | None = None,
                        **about: Any) -> Path:
        """Save a trial's adapter (never the base model), its step and the params it was trained with:
        what `run_trial(resume_from=)` reads. `about` adds JSON fields for the backend (e.g. who wrote it).

        Example:
            >>> objective.save_checkpoint(peft_model, 20, "ckpt")  # doctest: +SKIP
            PosixPath('ckpt')
        """
        import json

        directory = Path(directory)
        model.save_pretrained(directory)
        state = {"step": int(step), **({"params": dict(params)} if params is not None else {}), **about}
        (directory / CHECKPOINT_STATE).write_text(json.dumps(state))
        return directory

    @staticmethod
    def checkpoint_state(directory: str | Path) -> dict[str, Any]:
        """What `save_checkpoint` wrote beside the adapter: {"step", "params"?, and its `about` fields}."""
        import json

        directory = Path(directory)
        try:
            state = json.loads((directory / CHECKPOINT_STATE).read_text())
            int(state["step"])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{directory} is not an ftsweep trial checkpoint ({exc})") from exc
        return state

    def load_checkpoint(self, model, directory: str | Path) -> int:
        """Load the adapter weights `save_checkpoint` wrote into `model`; returns the step they are from."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        step = int(self.checkpoint_state(directory)["step"])
        try:
            weights = load_file(directory / "adapter_model.safetensors")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{directory} is not an ftsweep trial checkpoint ({exc})") from exc
        expected = get_peft_model_state_dict(model)
        mismatched = sorted(set(expected) ^ set(weights)) + sorted(
            k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
        if mismatched:
            # A shape-changing param (rank, target modules, method) differs: these weights do not fit.
            raise ValueError(f"checkpoint {directory} does not fit this adapter (e.g. {mismatched[0]})")
        set_peft_model_state_dict(model, weights)
        return step

    def fit(self, params: Mapping[str, Any], output_dir: str | Path, *, merge_validation: bool = False) -> dict[str, float]:
        """The final fit of a chosen config: train, evaluate on validation and on the held-out test
        split, save the PEFT adapter (loadable with `PeftModel.from_pretrained`) in `output_dir/adapter`.

        With `merge_validation`, the validation examples are trained on too (validation metrics are
        then no longer held-out figures; the test metrics still are).

        Example:
            >>> metrics = objective.fit(params, "runs/final")  # doctest: +SKIP
            >>> sorted(metrics)[:2]  # doctest: +SKIP
            ['eval_loss', 'perplexity']
        """
        output_dir = Path(output_dir)
        if self.base_model is None:
            self.setup()
        train = self.train_dataset
        if merge_validation:
            from datasets import concatenate_datasets

            train = concatenate_datasets([self.train_dataset, self.eval_dataset])

        def save_and_test(model, trainer) -> dict[str, float]:
            model.save_pretrained(output_dir / "adapter")
            if self.test_dataset is None:
                return {}
            self.metric_split = "test"  # metrics that need per-row data (groups) read the test split's
            try:
                raw = trainer.evaluate(self.test_dataset, metric_key_prefix="test")
            finally:
                self.metric_split = "validation"
            metrics = {k: float(v) for k, v in raw.items()
                       if k.startswith("test_") and not k.endswith(("_runtime", "_per_second"))}
            if "test_loss" in metrics:
                metrics["test_perplexity"] = perplexity(metrics["test_loss"])
            return metrics

        return self.run_trial(params, trial_dir=output_dir, train_dataset=train, after_training=save_and_test)


@functools.cache
def _sweep_trainer_class():
    """`transformers.Trainer`, minus a per-step cost that a trial does not need to pay.

    Trainer's FLOP count calls `model.num_parameters()` at every training step, a walk over every
    parameter of the model (~0.5 ms a step on the tiny demo model, 4 % of its step; docs/benchmarks.md).
    A trial's parameter count does not change while it trains, so it is counted once.
    """
    from transformers import Trainer

    class SweepTrainer(Trainer):
        _flop_parameters: int | None = None

        def floating_point_ops(self, inputs) -> int:
            main_input = getattr(self.model, "main_input_name", "input_ids")
            if main_input not in inputs or not hasattr(self.model, "num_parameters"):
                return 0
            if self._flop_parameters is None:
                self._flop_parameters = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs[main_input].numel() * self._flop_parameters

    return SweepTrainer


def _remove_adapter(model, config) -> None:
    """Give the base model its own modules back, untouched (no merge), whatever the PEFT method."""
    if config.is_prompt_learning:
        return  # prefix/prompt tuning add virtual tokens in the PeftModel wrapper; no base module changed
    if config.peft_type == "ADAPTION_PROMPT":
        tuner = model.base_model
        for name in list(tuner.peft_config):
            tuner.delete_adapter(name)  # swaps each adapted attention back for the original module
        return
    model.unload()  # LoRA, LoHa, LoKr, IA3: the wrapped layers are replaced by their base layers


def _check_pristine(base) -> None:
    """Refuse to start a trial on a base model that still carries a previous trial's adapter layers.

    Backends reuse one base model across trials (Ray actor reuse included, where a stopped trial ends
    by SystemExit inside `report`); every path out of `run_trial` must have unloaded its adapter.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    leftover = next((name for name, m in base.named_modules() if isinstance(m, BaseTunerLayer)), None)
    if leftover is not None:
        raise RuntimeError(f"the shared base model still has adapter layers from an earlier trial (at {leftover}); "
                           "the worker must be restarted")


def _restore_modules_to_save(peft_model) -> None:
    """Put back the original of every `modules_to_save` module (e.g. a classification head).

    PEFT trains a *copy* of such modules and `unload()` keeps the trained copy; the next trial must
    start from the original head, so each wrapper is swapped for its `original_module` first.
    """
    from peft.utils import ModulesToSaveWrapper

    root = peft_model.get_base_model()
    for name, module in list(root.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, child, module.original_module)


BASE_MODEL_PARAM = "base_model"


class _LoadedModel(NamedTuple):
    model: Any
    tokenizer: Any
    tokenizer_key: str  # tokenizer_fingerprint: which tokenized datasets this model trains on


def tokenizer_fingerprint(tokenizer) -> str:
    """Equal for tokenizers that turn every text into the same ids (same vocabulary, rules and special
    tokens), whatever model they came with: the key of the tokenized-data cache."""
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps([type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id,
                          tokenizer.pad_token_id, tokenizer.padding_side, getattr(tokenizer, "add_bos_token", None)])
    return hashlib.sha256((rules + special).encode()).hexdigest()[:16]


def _weights_bytes(path: str) -> int:
    """Size of a local checkpoint's weight files (0 for a hub id not downloaded yet: nothing to go by)."""
    root = Path(path)
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
