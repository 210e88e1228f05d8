"""Packed trials: K LoRA trials ("slots") trained at once on one copy of the base model.

`run_packed(objective, slots)` trains every slot's adapter in one forward/backward per step: the batch is
repeated once per slot (objectives/multi_lora.py), the frozen base runs once over all rows, and each slot's
loss is its own rows' (the model's own loss function, normalized as Trainer normalizes a trial's). What may
differ between slots: learning rate, scheduler type, warmup, weight decay, max_grad_norm (clipped per slot),
lora_r (ranks padded to the widest), lora_alpha, lora_dropout (independent masks), use_rslora. Everything else
must be equal (`pack_problems` says what is not).

The training loop is transformers' own (`Trainer`, through ftsweep's `SweepTrainer`): the same data order,
the same loss normalization and the same optimizer class as a trial alone, with one param group and one
schedule per slot. So with dropout 0 each slot's eval history is the one its trial would have had alone
(tests/objectives/engine/test_packed.py).

Example:
    >>> from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
    >>> objective = get_objective("causal_lm")(ModelConfig(name_or_path="bundled:tiny-support-lm"),
    ...     DataConfig(source="bundled:support-qa", max_train_examples=32, max_eval_examples=8),
    ...     TrainBudget(max_steps=2, eval_every=2, batch_size=4, max_seq_length=64))
    >>> slots = [{"learning_rate": 1e-3, "lora_r": 4}, {"learning_rate": 3e-3, "lora_r": 8}]
    >>> [sorted(r) for r in run_packed(objective, slots)]
    [['eval_loss', 'steps'], ['eval_loss', 'steps']]
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..multi_lora import MultiLoRALinear
from .trial import adapter_on, sweep_trainer_class

# Params each slot may set for itself; any other param must be equal across a pack.
PER_SLOT_PARAMS = ("learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay",
                   "max_grad_norm", "lora_r", "lora_alpha", "lora_alpha_ratio", "lora_dropout", "use_rslora")
SlotReport = Callable[[int, int, Mapping[str, float]], bool]  # (slot, step, metrics) -> prune this slot?


def pack_problems(slots: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why these trials' params cannot share a pack ([] when they can): a param other than PER_SLOT_PARAMS
    that differs, or a PEFT method other than LoRA.

    Example:
        >>> pack_problems([{"lora_r": 4, "batch_size": 8}, {"lora_r": 16, "batch_size": 16}])
        ['batch_size differs between slots (8, 16): a pack shares it']
    """
    problems = []
    methods = {str(s.get("peft_method", "lora")) for s in slots}
    if methods != {"lora"}:
        problems.append(f"peft_method {sorted(methods)}: packed slots are LoRA adapters")
    names = sorted({n for s in slots for n in s} - set(PER_SLOT_PARAMS) - {"peft_method"})
    for name in names:
        values = [s.get(name) for s in slots]
        if any(v != values[0] for v in values):
            problems.append(f"{name} differs between slots ({', '.join(map(str, values))}): a pack shares it")
    return problems


def run_packed(objective, slots: Sequence[Mapping[str, Any]], report: SlotReport | None = None,
               trial_dir: str | None = None) -> list[dict[str, float]]:
    """Train `slots` (each a trial's params) together; returns each slot's final metrics.

    `report(slot, step, metrics)` hears each slot's evaluation (eval_loss at every `eval_every` steps); its
    True stops that slot's updates (it is pruned; its rows keep flowing until the pack ends)."""
    import torch
    from transformers import PrinterCallback

    if objective.base_model is None:
        objective.setup()
    problems = pack_problems(slots)
    if problems:
        raise ValueError("these trials cannot share a pack: " + "; ".join(problems))
    params = [dict(s) for s in slots]
    with packed_adapters(objective, params) as (model, layers):
        trainer_cls = _packed_trainer_class()
        with tempfile.TemporaryDirectory(prefix="ftsweep-pack-") as tmp:
            # Each slot's own arguments (learning rate, schedule, warmup, decay, clipping), made before the
            # Trainer: making TrainingArguments resets accelerate's state, which a live Trainer relies on.
            slot_args = [objective.training_arguments(p, trial_dir or tmp) for p in params]
            args = objective.training_arguments(params[0], trial_dir or tmp)
            args.max_grad_norm = 0.0  # Trainer clips all slots' gradients together: PerSlotClipping instead
            train, _, collator = objective.training_data(params[0])
            trainer = trainer_cls(model=model, args=args, train_dataset=train, eval_dataset=objective.eval_dataset,
                                  data_collator=collator)
            trainer.setup_pack(slot_args, layers, report)
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            if not trainer.slot_history[0] or trainer.slot_history[0][-1][0] != trainer.state.global_step:
                trainer.evaluate()
        del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return [{**history[-1][1], "steps": float(history[-1][0])} for history in model.slot_history]


@contextmanager
def packed_adapters(objective, params: Sequence[Mapping[str, Any]]):
    """The base model with one LoRA adapter per slot on every layer the slots' LoRA config targets, each
    initialised exactly as its trial alone would be (PEFT's own init, after the sweep's seed); on exit the
    base model as it was found."""
    import torch
    from peft.tuners.lora import LoraLayer
    from transformers import set_seed

    base = objective.base_model
    inits: list[dict[str, tuple]] = []
    configs = [objective.peft_config(p) for p in params]
    for config, slot in zip(configs, params):
        set_seed(objective.seed)  # as run_trial does before the adapter is made
        with adapter_on(base, config, slot) as peft_model:
            inits.append({name.removeprefix("base_model.model."): (m.lora_A["default"].weight.detach().clone(),
                                                                   m.lora_B["default"].weight.detach().clone())
                          for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)})
    targets = sorted(inits[0])
    if any(sorted(i) != targets for i in inits):
        raise ValueError("the slots adapt different layers: target_modules must be the same in a pack")

    saved_requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
    originals: dict[str, torch.nn.Module] = {}
    layers: list[MultiLoRALinear] = []
    try:
        for p in base.parameters():
            p.requires_grad_(False)
        for name in targets:
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            original = getattr(parent, child)
            layer = MultiLoRALinear(original, ranks=[c.r for c in configs], alphas=[c.lora_alpha for c in configs],
                                    dropouts=[c.lora_dropout for c in configs],
                                    rslora=[bool(c.use_rslora) for c in configs])
            with torch.no_grad():
                for k, init in enumerate(inits):
                    layer.lora_A[k].copy_(init[name][0])
                    layer.lora_B[k].copy_(init[name][1])
            originals[name] = original
            setattr(parent, child, layer)
            layers.append(layer)
        yield _packed_model_class()(base, len(params)), layers
    finally:
        for name, original in originals.items():
            parent_name, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent_name) if parent_name else base, child, original)
        for name, p in base.named_parameters():
            p.requires_grad_(saved_requires_grad.get(name, p.requires_grad))
        base.eval()


@functools.cache
def _packed_model_class():
    import torch

    class PackedModel(torch.nn.Module):
        """The base model over the batch repeated once per slot (slot-major rows); the loss is the sum of the
        slots' own losses, each the model's own loss function over its rows, normalized by the batch's label
        count exactly as a trial alone normalizes it (`num_items_in_batch`)."""

        def __init__(self, base, slots: int) -> None:
            super().__init__()
            self.base = base
            self.slots = slots
            self.config = base.config  # what Trainer reads of a model
            self.slot_history: list[list[tuple[int, dict[str, float]]]] = [[] for _ in range(slots)]

        def forward(self, input_ids, labels=None, num_items_in_batch=None, **inputs):
            k, rows = self.slots, input_ids.shape[0]
            repeated = {name: value.repeat(k, *[1] * (value.dim() - 1)) if torch.is_tensor(value) else value
                        for name, value in {"input_ids": input_ids, **inputs}.items() if value is not None}
            logits = self.base(**repeated, use_cache=False).logits
            if labels is None:
                return {"logits": logits}
            per_slot = logits.view(k, rows, *logits.shape[1:])
            losses = torch.stack([self.base.loss_function(logits=per_slot[s], labels=labels,
                                                          vocab_size=logits.shape[-1],
                                                          num_items_in_batch=num_items_in_batch)
                                  for s in range(k)])
            return {"loss": losses.sum(), "slot_losses": losses.detach()}

    return PackedModel


@functools.cache
def _packed_trainer_class():
    import torch

    class PackedTrainer(sweep_trainer_class()):
        """Trainer for a pack: one param group and one schedule per slot, clipping per slot, and evaluation
        of every slot's own loss, aggregated over batches as Trainer aggregates a trial's eval_loss."""

        def setup_pack(self, slot_args, layers, report) -> None:
            self.slot_args, self.pack_layers, self.pack_report = slot_args, layers, report
            self.slot_history = self.model.slot_history
            self.pruned = [False] * len(slot_args)
            self.add_callback(_clipping_callback_class()(self))

        def slot_parameters(self, k: int) -> list[torch.nn.Parameter]:
            return [p for layer in self.pack_layers for p in layer.slot_parameters(k)]

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
                groups = [{"params": self.slot_parameters(k), "lr": self.slot_args[k].learning_rate,
                           "weight_decay": self.slot_args[k].weight_decay} for k in range(len(self.slot_args))]
                self.optimizer = optimizer_cls(groups, **kwargs)
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            from transformers import get_scheduler

            if self.lr_scheduler is None:
                optimizer = optimizer or self.optimizer
                lambdas = []
                for k in range(len(self.slot_args)):
                    args = self.slot_args[k]
                    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
                    lambdas.append(get_scheduler(args.lr_scheduler_type, optimizer=probe,
                                                 num_warmup_steps=args.get_warmup_steps(num_training_steps),
                                                 num_training_steps=num_training_steps,
                                                 scheduler_specific_kwargs=args.lr_scheduler_kwargs).lr_lambdas[0])
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
            return self.lr_scheduler

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            """Each slot's eval_loss: per batch its mean over the batch's tokens, then the mean over rows."""
            model = self.model
            step = self.state.global_step
            if self.slot_history[0] and self.slot_history[0][-1][0] == step:  # asked again at the same step
                return {f"{metric_key_prefix}_slot{k}_loss": h[-1][1]["eval_loss"] for k, h in enumerate(self.slot_history)}
            was_training = model.training
            model.eval()
            totals, rows = torch.zeros(model.slots, dtype=torch.float64), 0
            with torch.no_grad():
                for batch in self.get_eval_dataloader(eval_dataset):
                    batch = self._prepare_inputs(batch)
                    losses = model(**batch)["slot_losses"]
                    size = batch["input_ids"].shape[0]
                    totals += losses.double().cpu() * size
                    rows += size
            model.train(was_training)
            metrics = {}
            for k, total in enumerate(totals.tolist()):
                loss = total / rows
                self.slot_history[k].append((step, {"eval_loss": loss}))
                metrics[f"{metric_key_prefix}_slot{k}_loss"] = loss
                if self.pack_report is not None and not self.pruned[k]:
                    self.pruned[k] = bool(self.pack_report(k, step, {"eval_loss": loss}))
            for k, pruned in enumerate(self.pruned):
                if pruned:  # no more updates for a pruned slot: its gradients are dropped from now on
                    for p in self.slot_parameters(k):
                        p.requires_grad_(False)
            return metrics

    return PackedTrainer


@functools.cache
def _clipping_callback_class():
    from transformers import TrainerCallback

    class PerSlotClipping(TrainerCallback):
        """Each slot's gradients clipped to its own max_grad_norm, as Trainer clips a trial's (before the step)."""

        def __init__(self, trainer) -> None:
            self.trainer = trainer

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            import torch

            trainer = self.trainer
            for k in range(len(trainer.slot_args)):
                limit = trainer.slot_args[k].max_grad_norm
                grads = [p for p in trainer.slot_parameters(k) if p.grad is not None]
                if limit and limit > 0 and grads:
                    torch.nn.utils.clip_grad_norm_(grads, limit)

    return PerSlotClipping

