"""A trial's `TrainingArguments`: the budget, the engine's fixed settings, then the trial's params.

Example:
    >>> from objectives import TrainBudget
    >>> kwargs = training_kwargs(TrainBudget(max_steps=20, eval_every=5), {"learning_rate": 1e-3, "batch_size": 4},
    ...                          "runs/t0", seed=0)
    >>> kwargs["max_steps"], kwargs["learning_rate"], kwargs["per_device_train_batch_size"], kwargs["logging_steps"]
    (20, 0.001, 4, 5)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from spaces import ConfigError

from ..settings import Direction, ModelConfig, TrainBudget


class _KernelHubNotice(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning.

    bitsandbytes >= 0.50 on a CPU with AVX512-BF16 fetches a fused 4-bit inference kernel from the Hugging Face
    Hub when it is imported -- and PEFT imports it in every process, quantized sweep or not -- and warns where it
    cannot (offline, as trials run). ftsweep never runs that kernel (`keep_quantized_layers_trainable`), so the
    warning would tell a user nothing to act on. Installed when `objectives` is imported, before PEFT is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KernelHubNotice())

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

# Params that shape the optimizer rather than TrainingArguments.
OPTIMIZER_PARAMS: dict[str, str] = {
    # LoRA+ (Hayou et al., 2024): lora_B trains at ratio x the learning rate of lora_A (PEFT's
    # create_loraplus_optimizer); the paper's best ratios on LLM fine-tunes were around 2^4.
    "loraplus_lr_ratio": "LoRA+: lora_B's learning rate = ratio x learning_rate (peft.optimizers.create_loraplus_optimizer)",
}


def loraplus_optimizer(model, args, ratio: float):
    """AdamW with LoRA+'s parameter groups (PEFT's `create_loraplus_optimizer`), set as `args` (TrainingArguments)
    sets Trainer's own: learning rate, weight decay, betas and epsilon."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=args.learning_rate, loraplus_lr_ratio=float(ratio),
                                     loraplus_weight_decay=args.weight_decay, betas=(args.adam_beta1, args.adam_beta2),
                                     eps=args.adam_epsilon)


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
        save_strategy="no",  # run_trial with TrialOptions(checkpoints=True) saves after every evaluation
        # A resumed trial keeps early stopping's patience count (off by default in transformers).
        restore_callback_states_from_checkpoint=True,
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    # transformers' own recipe: non-reentrant checkpointing, and the input-grad hook PEFT's frozen embeddings
    # need (activation_checkpointing_enable registers it for input_ids models). transformers 5.25 renamed the
    # argument (the old name warns); the name this transformers takes.
    kwargs[_checkpointing_argument()] = budget.gradient_checkpointing
    if budget.early_stopping_patience is not None:
        # What transformers' EarlyStoppingCallback watches.
        metric, direction = target
        kwargs.update(metric_for_best_model=metric, greater_is_better=direction == "maximize")
    for name, value in params.items():
        if name in TRAINING_ARGUMENT_PARAMS:
            kwargs[TRAINING_ARGUMENT_PARAMS[name]] = value
    return kwargs


@functools.cache
def _checkpointing_argument() -> str:
    import dataclasses

    from transformers import TrainingArguments

    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def training_arguments(kwargs: Mapping[str, Any], dtype, *, strategy: str = "ddp"):
    """`TrainingArguments(**kwargs)` with this machine's device and mixed-precision flags for `dtype`. In a
    process group of N (a distributed trial), `per_device_train_batch_size` is the trial's batch / N: the
    trial's global batch stays what its budget and params say, as on one process; `strategy` "fsdp" shards
    the model over the group (else DDP)."""
    import torch
    from transformers import TrainingArguments

    kwargs = dict(kwargs)
    if torch.distributed.is_initialized():
        # Every trainable tensor (the adapter) gets a gradient each step: DDP need not search the graph for
        # unused parameters, which Trainer's default does (docs/benchmarks.md: the distributed path's overhead).
        # (Its buffer broadcast at each forward stays: `ddp_broadcast_buffers` is deprecated by torch 2.13's DDP,
        # and the replacement cannot be passed through Trainer; it costs ~1 ms a step at 2 CPU ranks.)
        kwargs.setdefault("ddp_find_unused_parameters", False)
        if strategy == "fsdp":
            # FSDP2 (`fully_shard`) with full sharding, which runs on CPUs (gloo) as on GPUs; Trainer wraps a PEFT
            # model with PEFT's own auto-wrap policy, so the frozen base is sharded and the adapter trains.
            kwargs.setdefault("fsdp", True)
            kwargs.setdefault("fsdp_config", {"version": 2, "reshard_after_forward": True})
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


def check_quantization(model: ModelConfig, layers: Mapping[tuple[int, int], Sequence[str]] | None = None, *,
                       source: str | None = None) -> None:
    """Refuse `model.quantization` where bitsandbytes is missing or cannot run the model's quantized layers on
    this machine's device: one quantized layer of each shape in `layers` ((in_features, out_features) -> the
    names of the model's layers of that shape; default one 64x64 layer) is run as a trial runs it -- a training
    step (forward and backward), then an evaluation (eval mode, no gradients) -- in milliseconds per shape.

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
    for (inputs, outputs), names in sorted((layers or {(64, 64): ["a 64x64 layer"]}).items()):
        try:
            if settings.bits == 4:
                layer = bnb.nn.Linear4bit(inputs, outputs, bias=False, compute_dtype=torch.float32,
                                          compress_statistics=settings.double_quant,
                                          quant_type=settings.quant_type).to(device)
            else:
                layer = bnb.nn.Linear8bitLt(inputs, outputs, bias=False, has_fp16_weights=False).to(device)
            keep_quantized_layers_trainable(layer)
            layer(torch.randn(2, inputs, device=device, requires_grad=True)).sum().backward()
            layer.eval()
            with torch.no_grad():
                layer(torch.randn(2, inputs, device=device))
        except Exception as exc:  # noqa: BLE001 - whatever bitsandbytes raises, the launch must say why
            shown = ", ".join(list(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise ConfigError(
                f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run this model's {settings.bits}-bit "
                f"{inputs}->{outputs} layers on {device} here ({shown}): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}", source=source, key=key,
                hint="Fix: install a bitsandbytes build for this device (0.45+ runs 4-bit on CPU), or remove "
                "model.quantization.") from exc


def keep_quantized_layers_trainable(model) -> None:
    """Keep `model`'s 4-bit layers in the layout they train in, through evaluations too.

    On a CPU with AVX512-BF16, bitsandbytes repacks a `Linear4bit` weight for its fused inference kernel the
    first time the layer runs in eval mode without gradients -- a trial's first evaluation -- and keeps it
    repacked: the training steps after it then run through that kernel, which has no backward (PyTorch warns
    of "silently incorrect behavior"), and the repacking itself needs out_features divisible by 32. A trial
    alternates training and evaluation, so its layers keep the general kernels (any shape, with gradients).
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False  # bitsandbytes' own switch for that repacking


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
