"""Packed trials: K LoRA trials ("slots") trained at once on one copy of the base model.

`run_packed(objective, slots)` trains every slot's adapter in one forward/backward per step: the slots'
batches stacked slot-major (objectives/adapters/multi_lora.py), the frozen base run once over all their rows, and each
slot's loss its own rows' (the model's own loss function, normalized as Trainer normalizes a trial's). What may
differ between slots: learning rate, scheduler type, warmup, weight decay, max_grad_norm (clipped per slot),
lora_r (ranks padded to the widest), lora_alpha, lora_dropout (independent masks), use_rslora. Everything else
must be equal (`pack_problems` says what is not).

Each slot runs its own trial at its own step: a slot whose trial is pruned or completes is backfilled at once
(`next_params`) with a new trial that starts at its own step 0. So each slot reads its own batch of the
trial's data order -- the batches transformers' Trainer would give the trial alone (its train dataloader,
epoch by epoch) -- padded to the widest of the step; the loss of each is normalized as Trainer normalizes a
trial's, the optimizer is Trainer's (one param group per slot, its learning rate set from its own schedule at
its own step), gradients are clipped per slot, and each slot's eval_loss is aggregated as Trainer aggregates
a trial's. With dropout 0 every trial's eval history is the one it has alone
(tests/objectives/engine/test_packed.py).

Example:
    >>> from objectives import DataConfig, ModelConfig, TrainBudget, get_objective
    >>> objective = get_objective("causal_lm")(ModelConfig(name_or_path="bundled:tiny-support-lm"),
    ...     DataConfig(source="bundled:support-qa", max_train_examples=32, max_eval_examples=8),
    ...     TrainBudget(max_steps=2, eval_every=2, batch_size=4, max_seq_length=64))
    >>> slots = [{"learning_rate": 1e-3, "lora_r": 4}, {"learning_rate": 3e-3, "lora_r": 8}]
    >>> [(r["steps"], r["pruned"]) for r in run_packed(objective, slots)]
    [(2, False), (2, False)]
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapters.multi_lora import MultiLoRALinear
from . import checkpoint
from .callback import COST_METRICS, PAUSE, CostMeter
from .trial import adapter_on, sweep_trainer_class

# Params each slot may set for itself; any other param must be equal across a pack.
PER_SLOT_PARAMS = ("learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay",
                   "max_grad_norm", "lora_r", "lora_alpha", "lora_alpha_ratio", "lora_dropout", "use_rslora")
# What each packed trial reports at an evaluation: any of them may be optimized, constrained or recorded.
PACK_METRICS = ("eval_loss", "perplexity", *COST_METRICS)
# (trial: its index in the order trials started, step, metrics) -> prune it (True), pause it (PAUSE) or go on?
TrialReport = Callable[[int, int, Mapping[str, float]], "bool | str"]
# (trial: its index in the order trials started) -> a folder (or None)
TrialFolder = Callable[[int], "str | Path | None"]


def pack_problems(slots: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why these trials' params cannot share a pack ([] when they can): a param other than PER_SLOT_PARAMS
    that differs, or a PEFT method other than LoRA.

    Example:
        >>> pack_problems([{"lora_r": 4, "batch_size": 8}, {"lora_r": 16, "batch_size": 16}])
        ['batch_size differs between slots (8, 16): a pack shares it']
    """
    problems = []
    if any("loraplus_lr_ratio" in s for s in slots):
        problems.append("loraplus_lr_ratio: a pack trains its slots with one plain AdamW")
    methods = {str(s.get("peft_method", "lora")) for s in slots}
    if methods != {"lora"}:
        problems.append(f"peft_method {sorted(methods)}: packed slots are LoRA adapters")
    names = sorted({n for s in slots for n in s} - set(PER_SLOT_PARAMS) - {"peft_method"})
    for name in names:
        values = [s.get(name) for s in slots]
        if any(v != values[0] for v in values):
            problems.append(f"{name} differs between slots ({', '.join(map(str, values))}): a pack shares it")
    return problems


def run_packed(objective, slots: Sequence[Mapping[str, Any]], report: TrialReport | None = None,
               next_params: Callable[[], Mapping[str, Any] | None] | None = None,
               on_end: Callable[[int, dict[str, Any]], None] | None = None,
               on_log: Callable[[int, int, dict[str, float]], None] | None = None,
               trial_dir: TrialFolder | None = None, resume_from: TrialFolder | None = None,
               checkpoint_interval_s: float = 0.0) -> list[dict[str, Any]]:
    """Train the trials `slots` (each a trial's params) together, one per slot; returns every trial's result
    (final metrics, `steps`, `pruned`, `paused`, `slot`, `duration_s`) in the order the trials started.

    `report(trial, step, metrics)` hears each trial's evaluation at its own steps; True prunes it, PAUSE pauses
    it (with `trial_dir`: that step's checkpoint is written whatever the interval, and the trial ends `paused`). When a trial
    ends, `on_end(trial, result)` hears it, then its slot takes `next_params()` (a new trial, from its step 0),
    until that is None. `on_log(trial, step, logs)` hears its training logs (train_loss, learning_rate) every
    `logging_steps`, as Trainer logs a trial's.

    With `trial_dir(trial)`, each trial writes a resumable checkpoint there after an evaluation it goes on from
    (once `checkpoint_interval_s` have passed since its last one), the newest kept: `checkpoint-<step>`, a
    standard PEFT adapter folder plus its optimizer state and progress (`save_slot`). A trial whose
    `resume_from(trial)` names such a checkpoint goes on from it, exactly (with dropout 0) as if it had never
    stopped."""
    problems = pack_problems(slots)
    if problems:
        raise ValueError("these trials cannot share a pack: " + "; ".join(problems))
    if objective.base_model is None:
        objective.setup()
    with Pack(objective, [dict(s) for s in slots], report=report, next_params=next_params, on_end=on_end,
              on_log=on_log, trial_dir=trial_dir, resume_from=resume_from,
              checkpoint_interval_s=checkpoint_interval_s) as pack:
        while pack.running():
            pack.step()
    return [trial.result() for trial in pack.trials]


@dataclass
class PackedTrial:
    """One trial in a slot: its params, arguments (learning rate, schedule, clipping) and progress."""

    number: int  # its index in the order trials started in this pack
    slot: int
    params: dict[str, Any]
    args: Any  # its TrainingArguments
    lr_lambda: Callable[[int], float]
    config: Any = None  # its LoraConfig
    folder: Path | None = None  # where its checkpoints go (None: it writes none)
    step: int = 0
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    pruned: bool = False
    paused: bool = False  # ended by a PAUSE: its checkpoint at `step` is in `folder`
    diverged: str | None = None  # why its loss stopped being a number; it then ends at once, failed
    started: float = field(default_factory=time.monotonic)
    elapsed_before: float = 0.0  # seconds it trained before the checkpoint it resumed from
    last_saved: float = field(default_factory=time.monotonic)
    duration_s: float | None = None  # its own time in slots (all its runs together), set when it ends
    since_log: list[float] = field(default_factory=list)  # training losses of the steps since the last log
    logged: list[float] = field(default_factory=list)  # the logged means since the last evaluation
    loss_sum: float = 0.0  # over every step: the whole run's mean training loss, as Trainer's train_loss

    def result(self) -> dict[str, Any]:
        last = self.history[-1][1] if self.history else {}
        train = {"train_loss": self.loss_sum / self.step} if self.step else {}
        return {**last, **train, "steps": self.step, "pruned": self.pruned, "paused": self.paused,
                "diverged": self.diverged, "slot": self.slot,
                "duration_s": self.duration_s}

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def progress(self) -> dict[str, Any]:
        """What a checkpoint keeps of its progress besides the weights and the optimizer state."""
        return {"history": [[step, metrics] for step, metrics in self.history], "loss_sum": self.loss_sum,
                "since_log": self.since_log, "logged": self.logged}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Its progress as a checkpoint's state (checkpoint_state) holds it."""
        pack = state["pack"]
        self.step = int(state["step"])
        self.history = [(int(step), dict(metrics)) for step, metrics in pack["history"]]
        self.loss_sum = float(pack["loss_sum"])
        self.since_log, self.logged = list(pack["since_log"]), list(pack["logged"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))


class Pack:
    """The base model with one LoRA adapter per slot (`MultiLoRALinear` on every layer LoRA targets), the
    optimizer, and the trial each slot runs; on exit the base model exactly as it was found."""

    def __init__(self, objective, first: Sequence[dict[str, Any]], *, report: TrialReport | None = None,
                 next_params: Callable[[], Mapping[str, Any] | None] | None = None,
                 on_end: Callable[[int, dict[str, Any]], None] | None = None,
                 on_log: Callable[[int, int, dict[str, float]], None] | None = None,
                 trial_dir: TrialFolder | None = None, resume_from: TrialFolder | None = None,
                 checkpoint_interval_s: float = 0.0) -> None:
        self.objective = objective
        self.trial_dir = trial_dir
        self.resume_from = resume_from
        self.checkpoint_interval_s = checkpoint_interval_s
        self.on_end = on_end
        self.on_log = on_log
        self.base = objective.base_model
        self.first = list(first)
        self.report = report
        self.next_params = next_params
        self.budget = objective.budget
        self.trials: list[PackedTrial] = []
        self.slots: list[PackedTrial | None] = []
        self.layers: dict[str, MultiLoRALinear] = {}
        self.batches: dict[int, list[dict]] = {}  # epoch -> the trial's training batches of that epoch
        self.costs = CostMeter()  # the pack's peak memory and evaluation speed, as a trial alone measures its own

    # ---------------------------------------------------------------- set-up and tear-down

    def __enter__(self) -> "Pack":
        import torch

        self._tmp = tempfile.TemporaryDirectory(prefix="ftsweep-pack-")
        self._requires_grad = {name: p.requires_grad for name, p in self.base.named_parameters()}
        inits = [self._peft_init(p) for p in self.first]
        self.targets = sorted(inits[0][0])
        try:
            for p in self.base.parameters():
                p.requires_grad_(False)
            configs = [config for _, config in inits]
            for name in self.targets:
                original = self.base.get_submodule(name)
                layer = MultiLoRALinear(original, ranks=[c.r for c in configs], alphas=[c.lora_alpha for c in configs],
                                        dropouts=[c.lora_dropout for c in configs],
                                        rslora=[bool(c.use_rslora) for c in configs])
                with torch.no_grad():
                    for k, (weights, _) in enumerate(inits):
                        layer.lora_A[k].copy_(weights[name][0])
                        layer.lora_B[k].copy_(weights[name][1])
                self.layers[name] = layer
            self._wrap(True)
            self._start_training()
            for k, (params, (_, config)) in enumerate(zip(self.first, inits)):
                self.slots.append(self._new_trial(params, k, config))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.layers:
            self._wrap(False)
        for name, p in self.base.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))
        self.base.eval()
        self._tmp.cleanup()

    def _wrap(self, on: bool) -> None:
        """Put the multi-slot layers into the base model (on), or its own layers back (off)."""
        for name, layer in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.base.get_submodule(parent_name) if parent_name else self.base
            setattr(parent, child, layer if on else layer.base)

    def _peft_init(self, params: Mapping[str, Any]):
        """({layer name: (A, B)}, LoRA config) of a trial's adapter as PEFT makes it alone (after the sweep's
        seed, as run_trial does), read off the base model's own layers."""
        from peft.tuners.lora import LoraLayer
        from transformers import set_seed

        config = self.objective.peft_config(params)
        set_seed(self.objective.seed)
        with adapter_on(self.base, config, params) as peft_model:
            weights = {name.removeprefix("base_model.model."): (m.lora_A["default"].weight.detach().clone(),
                                                                m.lora_B["default"].weight.detach().clone())
                       for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
        return weights, config

    def _start_training(self) -> None:
        """The optimizer (Trainer's class and settings; one param group per slot), and the trials' data order:
        the train dataloader Trainer makes for a trial of this sweep (every trial of a pack shares it)."""
        args = self.objective.training_arguments(self.first[0], self._tmp.name)
        train, _, self.collator = self.objective.training_data(self.first[0])
        loaders = sweep_trainer_class()(model=self.base, args=args, train_dataset=train,
                                        eval_dataset=self.objective.eval_dataset, data_collator=self.collator)
        self.loader, self.eval_loader = loaders.get_train_dataloader(), loaders.get_eval_dataloader()
        optimizer_cls, kwargs = sweep_trainer_class().get_optimizer_cls_and_kwargs(args, self.base)
        kwargs.pop("lr", None)
        groups = [{"params": [p for layer in self.layers.values() for p in layer.slot_parameters(k)], "lr": 0.0,
                   "weight_decay": 0.0} for k in range(len(self.first))]
        self.optimizer = optimizer_cls(groups, **kwargs)
        self.base.train()
        self.costs.start(None)

    def _new_trial(self, params: Mapping[str, Any], slot: int, config) -> PackedTrial:
        """Slot `slot`'s new trial (its adapter already in the slot, as PEFT initialises it), resumed from its
        checkpoint where `resume_from` names one."""
        import torch
        from transformers import get_scheduler

        args = self.objective.training_arguments(params, self._tmp.name)
        steps = self.budget.max_steps
        probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = get_scheduler(args.lr_scheduler_type, optimizer=probe, num_warmup_steps=args.get_warmup_steps(steps),
                                 num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        number = len(self.trials)
        folder = self.trial_dir(number) if self.trial_dir is not None else None
        trial = PackedTrial(number, slot, dict(params), args, schedule.lr_lambdas[0], config=config,
                            folder=Path(folder) if folder is not None else None)
        self.trials.append(trial)
        resume = self.resume_from(number) if self.resume_from is not None else None
        optimizer_state = self._load_slot(slot, trial, Path(resume)) if resume is not None else None
        self._reset_group(slot, trial, optimizer_state)
        return trial

    def _reset_group(self, k: int, trial: PackedTrial, state: list[dict] | None = None) -> None:
        """Slot k's param group holds its current adapter's tensors, with `state` (a checkpoint's) or no
        optimizer state yet."""
        group = self.optimizer.param_groups[k]
        for p in group["params"]:
            self.optimizer.state.pop(p, None)
        group["params"] = [p for layer in self.layers.values() for p in layer.slot_parameters(k)]
        group["weight_decay"] = trial.args.weight_decay
        for p, saved in zip(group["params"], state or []):
            if saved:
                self.optimizer.state[p] = {name: value.to(p.device) if hasattr(value, "to") else value
                                           for name, value in saved.items()}

    # ---------------------------------------------------------------- checkpoints

    def _adapter_state(self, k: int) -> dict:
        """Slot k's adapter as PEFT's state dict of the trial's model names it (`get_peft_model_state_dict`)."""
        state = {}
        for name, layer in self.layers.items():
            a, b = layer.slot_parameters(k)
            state[f"base_model.model.{name}.lora_A.weight"] = a.detach().contiguous().cpu()
            state[f"base_model.model.{name}.lora_B.weight"] = b.detach().contiguous().cpu()
        return state

    def save_slot(self, k: int, folder: str | Path) -> Path:
        """Slot k's trial as a checkpoint in `folder`: its adapter as a standard PEFT adapter folder
        (adapter_model.safetensors, adapter_config.json: `PeftModel.from_pretrained` loads it on the base
        model), its optimizer state (optimizer.pt) and, written last, its step and progress."""
        import torch
        from safetensors.torch import save_file

        trial = self.slots[k]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self._adapter_state(k), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        trial.config.save_pretrained(str(folder))
        group = self.optimizer.param_groups[k]
        torch.save([self.optimizer.state.get(p, {}) for p in group["params"]], folder / "optimizer.pt")
        return checkpoint.write_checkpoint_state(folder, trial.step, params=trial.params, elapsed_s=trial.elapsed(),
                                                 pack=trial.progress())

    def _checkpoint(self, k: int, *, forced: bool = False) -> None:
        """After an evaluation the trial goes on from: its checkpoint, once the interval has passed (`forced`:
        at once, a paused trial's); the older ones removed."""
        trial = self.slots[k]
        if trial.folder is None or (not forced and time.monotonic() - trial.last_saved < self.checkpoint_interval_s):
            return
        folder = self.save_slot(k, trial.folder / f"checkpoint-{trial.step}")
        trial.last_saved = time.monotonic()
        for old in trial.folder.glob("checkpoint-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def _load_slot(self, k: int, trial: PackedTrial, folder: Path) -> list[dict]:
        """Slot k's adapter and the trial's progress from its checkpoint; returns the optimizer state saved."""
        import torch
        from safetensors.torch import load_file

        state = checkpoint.checkpoint_state(folder)
        if dict(state.get("params", {})) != trial.params or "pack" not in state:
            raise ValueError(f"{folder} is not a checkpoint of this packed trial (other params, or not a pack's)")
        weights = load_file(str(folder / "adapter_model.safetensors"))
        for name, layer in self.layers.items():
            a = weights[f"base_model.model.{name}.lora_A.weight"]
            b = weights[f"base_model.model.{name}.lora_B.weight"]
            layer.set_slot(k, a, b, alpha=trial.config.lora_alpha, dropout=trial.config.lora_dropout,
                           rslora=bool(trial.config.use_rslora))
        trial.restore(state)
        return torch.load(folder / "optimizer.pt", weights_only=True)

    def _backfill(self, k: int) -> None:
        """Slot k's trial ended: the next trial takes the slot from its own step 0 (or the slot stays empty)."""
        params = self.next_params() if self.next_params is not None else None
        if params is None:
            self.slots[k] = None
            return
        problems = pack_problems([self.slots[k].params, dict(params)])
        if problems:
            raise ValueError("a backfilled trial cannot share this pack: " + "; ".join(problems))
        self._wrap(False)  # PEFT makes the new adapter on the base model's own layers (left frozen by adapter_on)
        try:
            weights, config = self._peft_init(params)
        finally:
            self._wrap(True)
        for name, layer in self.layers.items():
            layer.set_slot(k, *weights[name], alpha=config.lora_alpha, dropout=config.lora_dropout,
                           rslora=bool(config.use_rslora))
        self.slots[k] = self._new_trial(params, k, config)
        self.base.train()

    # ---------------------------------------------------------------- one step

    def running(self) -> bool:
        return any(trial is not None for trial in self.slots)

    def _batch(self, step: int) -> dict:
        """The trial's batch at `step` (0-based): epoch by epoch, as Trainer's loop draws them."""
        per_epoch = len(self.loader)
        epoch = step // per_epoch
        if epoch not in self.batches:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            inner = getattr(getattr(self.loader, "batch_sampler", None), "batch_sampler", None)
            if hasattr(inner, "set_epoch"):
                inner.set_epoch(epoch)
            self.batches[epoch] = list(self.loader)
            oldest = min(t.step for t in self.slots if t is not None) // per_epoch
            for old in [e for e in self.batches if e < oldest]:
                del self.batches[old]
        return self.batches[epoch][step % per_epoch]

    def step(self) -> None:
        """One optimizer step of every running trial, on its own next batch; then the evaluations due."""
        import torch

        active = [k for k, trial in enumerate(self.slots) if trial is not None]
        losses = self._forward([self._batch(self.slots[k].step) for k in active], active, count_items=True)
        finite = torch.isfinite(losses.detach())
        # A slot whose loss is NaN/inf fails its trial alone: its rows never reach the others' (no op mixes
        # rows), and its loss is left out of the backward so no NaN gradient reaches anything.
        if finite.any():
            losses[finite].sum().backward()
        for i, k in reversed(list(enumerate(active))):
            if not finite[i]:
                trial = self.slots[k]
                trial.diverged = f"training loss became {losses[i].item()} at step {trial.step + 1}"
                self._end(k)
                active.pop(i)
        for k in active:
            trial = self.slots[k]
            group = self.optimizer.param_groups[k]
            limit = trial.args.max_grad_norm
            if limit and limit > 0:
                torch.nn.utils.clip_grad_norm_(group["params"], limit)
            group["lr"] = trial.args.learning_rate * trial.lr_lambda(trial.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        due = []
        for i, k in enumerate(active):
            trial = self.slots[k]
            trial.step += 1
            self._log(trial, float(losses[i].detach()))
            if trial.step % self.budget.eval_every == 0 or trial.step == self.budget.max_steps:
                due.append(k)
        if due:
            self._evaluate(due)

    def _log(self, trial: PackedTrial, loss: float) -> None:
        """A step's training loss; every logging_steps, their mean logged (as Trainer logs `loss`)."""
        trial.loss_sum += loss
        trial.since_log.append(loss)
        if trial.step % trial.args.logging_steps == 0:
            mean = sum(trial.since_log) / len(trial.since_log)
            trial.since_log, trial.logged = [], [*trial.logged, mean]
            if self.on_log is not None:
                lr = trial.args.learning_rate * trial.lr_lambda(trial.step)  # the next step's, as Trainer logs it
                self.on_log(trial.number, trial.step, {"train_loss": mean, "learning_rate": lr})

    def _forward(self, batches: list[dict], slots: list[int], *, count_items: bool):
        """Each slot's loss on its batch: the batches padded to one width (and rows), stacked slot-major."""
        import torch

        width = max(b["input_ids"].shape[1] for b in batches)
        rows = max(b["input_ids"].shape[0] for b in batches)
        pad = self.objective.tokenizer.pad_token_id
        ids, mask, labels = [], [], []
        for b in batches:
            n, w = b["input_ids"].shape
            ids.append(torch.nn.functional.pad(b["input_ids"], (0, width - w, 0, rows - n), value=pad))
            m = torch.nn.functional.pad(b["attention_mask"], (0, width - w, 0, rows - n), value=0)
            m[n:, 0] = 1  # a filler row attends to its first token: no row may attend to nothing (NaN)
            mask.append(m)
            labels.append(torch.nn.functional.pad(b["labels"], (0, width - w, 0, rows - n), value=-100))
        device = next(self.base.parameters()).device
        for layer in self.layers.values():
            layer.active = slots
        logits = self.base(input_ids=torch.cat(ids).to(device), attention_mask=torch.cat(mask).to(device),
                           use_cache=False).logits
        per_slot = logits.view(len(slots), rows, width, -1)
        out = []
        for i, b in enumerate(batches):
            target = labels[i].to(device)
            # Trainer's count for a causal LM: the labels after the shift (`_get_num_items_in_batch`).
            items = b["labels"][..., 1:].ne(-100).sum().to(device) if count_items else None
            out.append(self.base.loss_function(logits=per_slot[i], labels=target, vocab_size=logits.shape[-1],
                                               num_items_in_batch=items))
        return torch.stack(out)

    def _evaluate(self, due: list[int]) -> None:
        """eval_loss of the due slots' trials: per batch the mean over its tokens, then the mean over rows."""
        import torch

        self.base.eval()
        totals, seen = torch.zeros(len(due), dtype=torch.float64), 0
        started = time.perf_counter()
        with torch.no_grad():
            for batch in self.eval_loader:
                losses = self._forward([batch] * len(due), due, count_items=False)
                totals += losses.double().cpu() * batch["input_ids"].shape[0]
                seen += batch["input_ids"].shape[0]
        seconds = time.perf_counter() - started
        self.base.train()
        # COST_METRICS as a trial alone reports them: the process's peak memory (the pack's); each trial's share
        # of the evaluation time per example; below, its own adapter's size.
        costs = self.costs.metrics(None, {"eval_samples_per_second": len(due) * seen / max(seconds, 1e-9)})
        for k, total in zip(due, totals.tolist()):
            trial = self.slots[k]
            metrics = self.objective.clean_metrics({"eval_loss": total / seen})  # + perplexity
            metrics["trainable_params"] = float(sum(p.numel() for layer in self.layers.values()
                                                    for p in layer.slot_parameters(k)))
            metrics.update(costs)
            if trial.logged:  # the train-validation gap, as a trial alone reports it
                metrics["interval_train_loss"] = sum(trial.logged) / len(trial.logged)
                metrics["train_eval_gap"] = metrics["eval_loss"] - metrics["interval_train_loss"]
                trial.logged = []
            trial.history.append((trial.step, metrics))
            if not math.isfinite(metrics["eval_loss"]):
                trial.diverged = f"eval loss became {metrics['eval_loss']} at step {trial.step}"
                self._end(k)
                continue
            decision = (self.report(trial.number, trial.step, metrics) or False) if self.report is not None else False
            if trial.step >= self.budget.max_steps:
                self._end(k)
            elif decision == PAUSE and trial.folder is not None:
                self._checkpoint(k, forced=True)
                trial.paused = True
                self._end(k)
            elif decision:
                trial.pruned = True
                self._end(k)
            else:
                self._checkpoint(k)

    def _end(self, k: int) -> None:
        """Slot k's trial is over (completed, pruned or diverged): heard by `on_end`, then the slot backfilled."""
        trial = self.slots[k]
        trial.duration_s = trial.elapsed()
        if self.on_end is not None:
            self.on_end(trial.number, trial.result())
        self._backfill(k)
