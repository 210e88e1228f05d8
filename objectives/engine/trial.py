"""What happens per trial: adapter on, train, evaluate and report, adapter off.

`run_trial` wraps the worker's *shared* base model in a fresh PEFT adapter, trains `budget.max_steps`
steps with `transformers.Trainer`, reports every evaluation to the backend (which may prune), and
then removes the adapter. `adapter_on` is the one place the base model is restored: whatever ends
the trial (done, pruned, diverged, an exception, Ray's SystemExit), its weights, dropouts and
`requires_grad` flags are exactly as they were found.
"""

from __future__ import annotations

import functools
import gc
import tempfile
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..adapters import regularization
from ..data import augmentation
from .arguments import early_stopping, loraplus_optimizer
from . import checkpoint
from .callback import Checkpointing, rank_agreement, reporting_callback
from .worker import BASE_MODEL_PARAM

# Raised by transformers 5.x's own internals (Trainer, get_peft_model), not by anything a user can change.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# `report(step, metrics)` returns True when the backend wants the trial stopped (pruned), PAUSE when it wants
# the trial paused: checkpointed at that step and stopped, to be resumed exactly later (or never).
Reporter = Callable[[int, dict[str, float]], "bool | str"]


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial fails, and retrying the same params would too."""


class TrialPaused(Exception):
    """The backend paused the trial at `step` (its report returned PAUSE): a complete checkpoint of that step is
    in the trial's folder, and `run_trial` with `TrialOptions(resume_from=)` on it continues as if the trial had never stopped.

    Example:
        >>> TrialPaused(20).step
        20
    """

    def __init__(self, step: int) -> None:
        super().__init__(f"paused at step {step}")
        self.step = int(step)


@dataclass(frozen=True, kw_only=True)
class TrialOptions:
    """How one trial runs besides its params and reporter: where it writes, what it trains on, whom it tells,
    what it keeps. Backends build one and pass it down (`Objective.run_trial`, `run_distributed_trial`).

    Example:
        >>> options = TrialOptions(trial_dir="runs/demo/trial-3", checkpoints=True)
        >>> options.checkpoints, options.keep_checkpoints
        (True, 1)
        >>> options.for_another_process().on_log is None
        True
    """

    trial_dir: str | Path | None = None
    """Trainer's output folder and the trial's checkpoints; None: a temporary folder, removed afterwards."""
    train_dataset: Any = None
    """Tokenized rows that replace the training split."""
    merge_validation: bool = False
    """Train on the validation rows too (the final fit of a chosen config)."""
    after_training: Callable[[Any, Any], dict[str, float]] | None = None
    """`after_training(peft_model, trainer)` runs before the adapter is removed; its metrics join the result."""
    on_log: Callable[[int, dict[str, float]], None] | None = None
    """`on_log(step, logs)` hears Trainer's training logs (train_loss, learning_rate, grad_norm)."""
    on_evaluate: Callable[[int, Any], None] | None = None
    """`on_evaluate(step, peft_model)` sees the model at each evaluation."""
    checkpoints: bool = False
    """A resumable checkpoint in `trial_dir` after every evaluation but the last step's."""
    on_checkpoint: Callable[[int, Path], None] | None = None
    """`on_checkpoint(step, folder)` hears of each checkpoint before that evaluation is reported."""
    checkpoint_about: Mapping[str, Any] | None = None
    """Fields added to each checkpoint's state file (e.g. the backend's trial id)."""
    keep_checkpoints: int = 1
    """How many of the newest checkpoints are kept."""
    checkpoint_interval_s: float = 0.0
    """An evaluation's checkpoint is skipped when the previous one is younger than this."""
    resume_from: str | Path | None = None
    """A checkpoint folder (e.g. `latest_checkpoint(trial_dir)`) the trial continues from, exactly."""
    scores_dir: str | Path | None = None
    """Where evaluations that score rows one by one write them (`scores.write_scores`), for paired pruning."""

    def for_another_process(self) -> TrialOptions:
        """These options without what cannot cross a process boundary (callables, in-memory rows), paths as
        strings: what a distributed trial's ranks receive (each adds its own hooks)."""
        text = lambda value: None if value is None else str(value)  # noqa: E731
        return replace(self, train_dataset=None, after_training=None, on_log=None, on_evaluate=None,
                       on_checkpoint=None, trial_dir=text(self.trial_dir), resume_from=text(self.resume_from),
                       scores_dir=text(self.scores_dir))


def run_trial(objective, params: Mapping[str, Any], report: Reporter | None = None,
              options: TrialOptions | None = None) -> dict[str, float]:
    """One trial of `objective` (an `Objective`): see `Objective.run_trial`."""
    import torch
    from transformers import set_seed

    options = options or TrialOptions()
    if objective.base_model is None:
        objective.setup()
    if BASE_MODEL_PARAM in params:
        objective.worker.use(str(params[BASE_MODEL_PARAM]))
    # What the sweep keeps alive between trials (the study, the sampler, caches the last trial
    # filled) joins set-up's frozen objects, so this trial's collections -- run_trial's own and
    # accelerate's at every Trainer.train() -- walk only what this trial creates. Collected
    # first, so no garbage (e.g. a finished tracker run) is frozen for good.
    gc.collect()
    gc.freeze()
    peft_config = objective.peft_config(params)
    set_seed(objective.seed)  # adapter init and data order depend only on the sweep seed, not on trial order
    saved = checkpoint.checkpoint_state(options.resume_from) if options.resume_from is not None else None
    tmp = None
    if options.trial_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ftsweep-trial-")
        options = replace(options, trial_dir=tmp.name)
    try:
        with adapter_on(objective.base_model, peft_config, params) as model:
            if saved is not None:
                checkpoint.check_fits(model, options.resume_from)
            return _train_and_evaluate(objective, model, params, report, options, saved)
    finally:
        model = None  # (see _train_and_evaluate)
        if tmp is not None:
            tmp.cleanup()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train_and_evaluate(objective, model, params: Mapping[str, Any], report: Reporter | None,
                        options: TrialOptions, saved: Mapping[str, Any] | None) -> dict[str, float]:
    """Train `model` (the base under this trial's adapter) to the budget's end, from `saved`'s step when resumed;
    the final evaluation's metrics. Raises TrialDiverged, optuna.TrialPruned or TrialPaused as the run ended."""
    budget = objective.budget
    callback = reporting_callback(objective, report, options.on_log, on_evaluate=options.on_evaluate,
                                  checkpoints=_checkpointing(params, options, saved),
                                  scores_dir=options.scores_dir)
    trainer = _trainer(objective, model, params, options, callback)
    try:
        start_step = int(saved["step"]) if saved else 0
        train_loss = None  # resumed from the final step: nothing left to train
        if start_step < budget.max_steps:
            output = trainer.train(resume_from_checkpoint=str(options.resume_from) if saved else None)
            train_loss = whole_run_train_loss(trainer, output, start_step)
        elif saved:
            load_adapter_weights(model, options.resume_from)
            trainer.state.global_step = start_step  # the final evaluation is that step's
        _raise_if_stopped(callback)
        last_step = trainer.state.global_step if start_step < budget.max_steps else start_step
        if not callback.history or callback.history[-1][0] != last_step:
            # max_steps is not a multiple of eval_every: evaluate the final weights too.
            trainer.evaluate()
            if callback.diverged:  # a prune or pause asked at this extra evaluation comes too late to matter
                raise TrialDiverged(callback.diverged)
        final = dict(callback.history[-1][1])
        if (objective.requested_metrics & objective.task_class.periodic_metrics) - set(final) or (
                objective.harness is not None and not objective.harness_due(last_step)):
            # Stopped early between two evaluations that compute the task's or lm-eval's metrics: the result
            # has them all the same.
            final.update(objective.evaluation_extras(model))
        if train_loss is not None:
            final["train_loss"] = train_loss
        final["steps"] = float(last_step)
        if last_step < budget.max_steps:
            final["stopped_early_at"] = float(last_step)  # no improvement for `patience` evaluations
        if options.after_training is not None:
            callback.report = None  # later evaluations are not the sweep's to prune on
            final.update(options.after_training(model, trainer))
        return final
    finally:
        # An exception's traceback keeps this frame, and its locals, alive until the backend has recorded the
        # failure: not the Trainer (optimizer state) and the adapted model too.
        trainer = model = None


def _checkpointing(params: Mapping[str, Any], options: TrialOptions, saved: Mapping[str, Any] | None):
    """The trial's `Checkpointing` (callback.py) when it writes checkpoints or was resumed from one, else None."""
    if not options.checkpoints and saved is None:
        return None
    return Checkpointing(
        params, about=options.checkpoint_about, on_checkpoint=options.on_checkpoint,
        elapsed_before=float(saved.get("elapsed_s", 0.0)) if saved else 0.0,
        retune=saved is not None and dict(saved.get("params", params)) != dict(params),
        min_interval_s=options.checkpoint_interval_s)


def _trainer(objective, model, params: Mapping[str, Any], options: TrialOptions, callback):
    """The trial's Trainer: its arguments, rows, collator, LoRA+ optimizer, metrics and callbacks."""
    from transformers import PrinterCallback

    args = objective.training_arguments(params, str(options.trial_dir))
    if options.checkpoints:
        # A resumable checkpoint after every evaluation (the last step's excepted), the newest kept.
        args.save_strategy, args.save_steps = "steps", objective.budget.eval_every
        args.save_total_limit = options.keep_checkpoints
    train, trainer_cls, collator = objective.training_data(params, train_dataset=options.train_dataset,
                                                           merge_validation=options.merge_validation)
    # LoRA+ (a `loraplus_lr_ratio` param): lora_B in its own parameter group; Trainer builds the schedule.
    optimizer = loraplus_optimizer(model, args, params["loraplus_lr_ratio"]) if "loraplus_lr_ratio" in params else None
    trainer = trainer_cls(
        model=model,
        args=args,
        optimizers=(optimizer, None),
        train_dataset=train,
        eval_dataset=objective.eval_dataset,
        data_collator=collator,
        compute_metrics=objective.task.compute_metrics(objective.tokenized_data.state, "validation"),
        # Ours first: it adds the metrics early stopping reads; the ranks' agreement last, on what all decided.
        callbacks=[callback, *early_stopping(objective.budget), *rank_agreement()],
    )
    # With tqdm disabled, Trainer prints every log dict; the backend's progress display says enough.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _raise_if_stopped(callback) -> None:
    """The trial's end when its reporting callback saw one: diverged, pruned or paused."""
    import optuna

    if callback.diverged:
        raise TrialDiverged(callback.diverged)
    if callback.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned at step {callback.pruned_at}")
    if callback.paused_at is not None:
        raise TrialPaused(callback.paused_at)


def whole_run_train_loss(trainer, output, start_step: int) -> float:
    """The mean training loss over every step of the trial: a resumed `train()` averages only the
    steps it ran itself, so the steps before the checkpoint come from the restored log history."""
    loss = float(output.training_loss)
    if not start_step:
        return loss
    before, last = 0.0, 0
    for entry in trainer.state.log_history:  # each training log covers the steps since the previous one
        if "loss" in entry and entry["step"] <= start_step:
            before += float(entry["loss"]) * (entry["step"] - last)
            last = entry["step"]
    ran = trainer.state.global_step - start_step
    return (before + loss * ran) / max(last + ran, 1)


def load_adapter_weights(model, directory) -> None:
    """The checkpoint's adapter into `model`, for a trial resumed at its last step (nothing to train)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(directory) / "adapter_model.safetensors")))


def training_data(objective, params: Mapping[str, Any], *, train_dataset=None, merge_validation: bool = False):
    """(training rows, Trainer class, collator) of one trial: the training split (or `train_dataset`),
    augmented when the trial's `aug_*` params say so, followed by the validation rows with
    `merge_validation`; the task may change all three (balancing by group)."""
    from datasets import concatenate_datasets

    data = objective.tokenized_data
    active = augmentation.active_params(params)
    if active:
        augmented = objective.worker.augmented_train(params, active)
        rows, state = augmented.train, augmented.state
    else:
        rows, state = (data.train if train_dataset is None else train_dataset), data.state
    if merge_validation:
        rows = concatenate_datasets([rows, data.validation])
    return objective.task.training_data(params, rows, state, trainer_cls=sweep_trainer_class(),
                                        collator=objective.collator(), with_validation=merge_validation)


@contextmanager
def adapter_on(base, peft_config, params: Mapping[str, Any]):
    """`base` wrapped in a fresh PEFT adapter, with the trial's dropouts set; on exit, whatever
    happened, the base model exactly as it was found (weights, dropouts, requires_grad, eval mode)."""
    from peft import get_peft_model

    check_pristine(base)
    saved_requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
    had_peft_config = hasattr(base, "peft_config")
    restore_dropouts = regularization.apply_dropouts(base, params)
    try:
        model = get_peft_model(base, peft_config)
    except BaseException:
        restore_dropouts()
        raise
    try:
        yield model
    finally:
        restore_modules_to_save(model)
        remove_adapter(model, peft_config)
        restore_dropouts()
        stop_activation_checkpointing(base)
        for name, p in base.named_parameters():
            p.requires_grad_(saved_requires_grad.get(name, p.requires_grad))
        if hasattr(base, "peft_config") and not had_peft_config:
            del base.peft_config
        base.eval()
        del model  # an exception's traceback keeps this frame: not the wrapper too


def stop_activation_checkpointing(base) -> None:
    """Undo what `TrainingArguments(gradient_checkpointing=True)` did to the shared base model: its layers'
    checkpointing and the input-grad hook on its embeddings (the next trial's settings are its own)."""
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    if checkpointing:
        getattr(base, "activation_checkpointing_disable", getattr(base, "gradient_checkpointing_disable", None))()
    if getattr(base, "_require_grads_hooks", None) or hasattr(base, "_require_grads_hook"):
        base.disable_input_require_grads()


@functools.cache
def sweep_trainer_class():
    """`transformers.Trainer`, minus a per-step cost and checkpoint files a trial does not need.

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

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            if not _internal_call or self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return super().save_model(output_dir, _internal_call)
            # A trial checkpoint: the adapter only. Trainer would add the tokenizer (megabytes for a real
            # model, at every evaluation) and its arguments, which a resume takes from the sweep instead.
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            if self.args.should_save:
                checkpoint.save_adapter(self.accelerator.unwrap_model(self.model), output_dir)

    return SweepTrainer


def remove_adapter(model, config) -> None:
    """Give the base model its own modules back, untouched (no merge), whatever the PEFT method."""
    if config.is_prompt_learning:
        return  # prefix/prompt tuning add virtual tokens in the PeftModel wrapper; no base module changed
    if config.peft_type == "ADAPTION_PROMPT":
        tuner = model.base_model
        for name in list(tuner.peft_config):
            tuner.delete_adapter(name)  # swaps each adapted attention back for the original module
        return
    model.unload()  # LoRA, LoHa, LoKr, IA3: the wrapped layers are replaced by their base layers


def check_pristine(base) -> None:
    """Refuse to start a trial on a base model that still carries a previous trial's adapter layers.

    Backends reuse one base model across trials (Ray actor reuse included, where a stopped trial ends
    by SystemExit inside `report`); every path out of `run_trial` must have unloaded its adapter.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    leftover = next((name for name, m in base.named_modules() if isinstance(m, BaseTunerLayer)), None)
    if leftover is not None:
        raise RuntimeError(f"the shared base model still has adapter layers from an earlier trial (at {leftover}); "
                           "the worker must be restarted")


def restore_modules_to_save(peft_model) -> None:
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
