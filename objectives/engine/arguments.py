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

from spaces import ConfigError

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
        # transformers' own recipe: non-reentrant checkpointing, and the input-grad hook PEFT's frozen
        # embeddings need (activation_checkpointing_enable registers it for input_ids models).
        gradient_checkpointing=budget.gradient_checkpointing,
    )
    if budget.early_stopping_patience is not None:
        # What transformers' EarlyStoppingCallback watches.
        metric, direction = target
        kwargs.update(metric_for_best_model=metric, greater_is_better=direction == "maximize")
    for name, value in params.items():
        if name in TRAINING_ARGUMENT_PARAMS:
            kwargs[TRAINING_ARGUMENT_PARAMS[name]] = value
    return kwargs


def training_arguments(kwargs: Mapping[str, Any], dtype, *, strategy: str = "ddp"):
    """`TrainingArguments(**kwargs)` with this machine's device and mixed-precision flags for `dtype`. In a
    process group of N (a distributed trial), `per_device_train_batch_size` is the trial's batch / N: the
    trial's global batch stays what its budget and params say, as on one process; `strategy` "fsdp" shards
    the model over the group (else DDP)."""
    import torch
    from transformers import TrainingArguments

    kwargs = dict(kwargs)
    if torch.distributed.is_initialized():
        # Every trainable tensor (the adapter) gets a gradient each step, and the buffers (e.g. rotary tables)
        # never change: DDP need not search the graph for unused parameters nor re-broadcast buffers every
        # forward, which Trainer's defaults do (docs/benchmarks.md: the distributed path's overhead).
        kwargs.setdefault("ddp_find_unused_parameters", False)
        kwargs.setdefault("ddp_broadcast_buffers", False)
        if strategy == "fsdp":
            # FSDP2 (`fully_shard`), which runs on CPUs (gloo) as on GPUs; Trainer wraps a PEFT model with PEFT's
            # own auto-wrap policy, so the frozen base is sharded and the adapter trains.
            kwargs.setdefault("fsdp", "full_shard auto_wrap")
            kwargs.setdefault("fsdp_config", {"version": 2})
        world = torch.distributed.get_world_size()
        if "per_device_train_batch_size" in kwargs:  # (a re-run's halved batch may not split: said here)
            batch = int(kwargs["per_device_train_batch_size"])
            if batch % world:
                raise ValueError(f"batch size {batch} does not split over {world} processes")
            kwargs["per_device_train_batch_size"] = batch // world
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


def quantization_config(model: ModelConfig):
    """bitsandbytes' `BitsAndBytesConfig` for `model.quantization` (None when the base is not quantized).

    Example:
        >>> from objectives import ModelConfig, QuantizationSettings
        >>> quantization_config(ModelConfig(name_or_path="m", quantization=QuantizationSettings())).bnb_4bit_quant_type
        'nf4'
    """
    settings = model.quantization
    if settings is None:
        return None
    from transformers import BitsAndBytesConfig

    if settings.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch_dtype(model) if settings.compute_dtype == "auto" else _dtype(settings.compute_dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings.quant_type,
                              bnb_4bit_use_double_quant=settings.double_quant, bnb_4bit_compute_dtype=compute)


def check_quantization(model: ModelConfig, *, source: str | None = None) -> None:
    """Refuse `model.quantization` where bitsandbytes is missing or cannot run it on this machine's device:
    a quantized layer's forward and backward are tried on a 64x64 layer (milliseconds).

    Example:
        >>> from objectives import ModelConfig
        >>> check_quantization(ModelConfig(name_or_path="m"))  # nothing to check without quantization
    """
    settings = model.quantization
    if settings is None:
        return
    key = "model.quantization"
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("quantizing the base model needs bitsandbytes, which is not installed", source=source,
                          key=key, hint="Fix: pip install 'ftsweep[qlora]'; or remove model.quantization.") from None
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if settings.bits == 4:
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32,
                                      quant_type=settings.quant_type).to(device)
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False).to(device)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        layer(x).sum().backward()
    except Exception as exc:  # noqa: BLE001 - whatever bitsandbytes raises, the launch must say why
        raise ConfigError(
            f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run a {settings.bits}-bit layer on {device} here "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", source=source, key=key,
            hint="Fix: install a bitsandbytes build for this device (0.45+ runs 4-bit on CPU), or remove "
            "model.quantization.") from exc


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def early_stopping(budget: TrainBudget) -> list:
    """transformers' EarlyStoppingCallback when the budget asks for patience, else nothing."""
    if budget.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=budget.early_stopping_patience,
                                  early_stopping_threshold=budget.early_stopping_threshold)]
