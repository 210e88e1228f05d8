"""A trial's `TrainingArguments`: the budget, the engine's fixed settings, then the trial's params.

Example:
    >>> from objectives import TrainBudget
    >>> kwargs = training_kwargs(TrainBudget(max_steps=20, eval_every=5), {"learning_rate": 1e-3, "batch_size": 4},
    ...                          "runs/t0", seed=0)
    >>> kwargs["max_steps"], kwargs["learning_rate"], kwargs["per_device_train_batch_size"], kwargs["logging_steps"]
    (20, 0.001, 4, 5)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..settings import Direction, ModelConfig, TrainBudget

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


def training_kwargs(budget: TrainBudget, params: Mapping[str, Any], output_dir: str, *, seed: int,
                    target: tuple[str, Direction] = ("eval_loss", "minimize")) -> dict[str, Any]:
    """The machine-independent keyword arguments of `TrainingArguments` (JSON-serializable); `target`
    is the metric early stopping watches, with its direction."""
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        max_steps=budget.max_steps,
        per_device_train_batch_size=budget.batch_size,
        per_device_eval_batch_size=budget.eval_batch_size,
        gradient_accumulation_steps=budget.gradient_accumulation_steps,
        eval_strategy="steps",
        eval_steps=budget.eval_every,
        logging_strategy="steps",
        # Training loss is logged on steps that divide eval_every, so each evaluation sees the mean
        # training loss of exactly the steps since the previous one (the train-validation gap).
        logging_steps=max(d for d in range(1, min(budget.eval_every, 5) + 1) if budget.eval_every % d == 0),
        # Keep NaN visible: the default filter would replace a NaN loss with the running mean.
        logging_nan_inf_filter=False,
        save_strategy="no",  # run_trial(checkpoints=True) saves after every evaluation
        # A resumed trial keeps early stopping's patience count (off by default in transformers).
        restore_callback_states_from_checkpoint=True,
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    if budget.early_stopping_patience is not None:
        # What transformers' EarlyStoppingCallback watches.
        metric, direction = target
        kwargs.update(metric_for_best_model=metric, greater_is_better=direction == "maximize")
    for name, value in params.items():
        if name in TRAINING_ARGUMENT_PARAMS:
            kwargs[TRAINING_ARGUMENT_PARAMS[name]] = value
    return kwargs


def training_arguments(kwargs: Mapping[str, Any], dtype):
    """`TrainingArguments(**kwargs)` with this machine's device and mixed-precision flags for `dtype`."""
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    return TrainingArguments(**kwargs, use_cpu=not on_gpu, bf16=on_gpu and dtype == torch.bfloat16,
                             fp16=on_gpu and dtype == torch.float16)


def torch_dtype(model: ModelConfig):
    """The dtype models load in: `model.dtype`, or for "auto" bfloat16 on a GPU that has it, else float32.

    Example:
        >>> from objectives import ModelConfig
        >>> torch_dtype(ModelConfig(name_or_path="m", dtype="float16"))
        torch.float16
    """
    import torch

    if model.dtype != "auto":
        return getattr(torch, model.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def early_stopping(budget: TrainBudget) -> list:
    """transformers' EarlyStoppingCallback when the budget asks for patience, else nothing."""
    if budget.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=budget.early_stopping_patience,
                                  early_stopping_threshold=budget.early_stopping_threshold)]
