"""The Trainer callback that connects a trial's evaluations to the backend's pruner, and what a trial costs.

`transformers` is imported only when the first trial builds its callback (`reporting_callback`), so
importing `objectives` stays fast for the CLI.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

from ..settings import Direction
from ..evaluation import scores
from . import checkpoint

PAUSE = "pause"  # what a report returns to pause the trial (trial.py's Reporter)

# What a trial costs, measured at every evaluation of every task: natural targets of a second
# objective or a constraint ("maximize F1, minimize latency").
COST_METRICS: dict[str, Direction] = {
    "trainable_params": "minimize",  # the adapter's size: parameters with requires_grad
    "peak_memory_mb": "minimize",  # GPU: torch.cuda.max_memory_allocated; CPU: peak resident memory (sampled)
    "latency_ms": "minimize",  # evaluation time per example (forward pass, batched)
}


def reporting_callback(objective, report, on_log=None, *, on_evaluate=None, checkpoints=None, scores_dir=None):
    """A `TrainerCallback` that sends every evaluation to `report` and stops training when it says
    prune or the loss is NaN (see `TrialMonitor`)."""
    return _callback_class()(objective, report, on_log, on_evaluate=on_evaluate, checkpoints=checkpoints,
                             scores_dir=scores_dir)


class Checkpointing:
    """How a trial checkpoints (see checkpoint.py): what goes in each checkpoint's state file, and
    who hears of a completed one (`on_checkpoint(step, folder)`, before that evaluation's report)."""

    def __init__(self, params, *, about=None, on_checkpoint=None, elapsed_before: float = 0.0,
                 retune: bool = False, min_interval_s: float = 0.0) -> None:
        self.params = dict(params)
        self.about = dict(about or {})
        self.on_checkpoint = on_checkpoint
        self.elapsed_before = elapsed_before  # seconds trained before this resume
        self.retune = retune  # resumed with other hyperparameters than the checkpoint's (PBT)
        self.min_interval_s = min_interval_s  # skip an evaluation's checkpoint this soon after the last one
        self.started = self.last_saved = time.monotonic()

    def due(self) -> bool:
        """Whether this evaluation's checkpoint is written: always when someone takes each with its
        evaluation (Ray), else once `min_interval_s` have passed since the last one (or the start)."""
        return self.on_checkpoint is not None or time.monotonic() - self.last_saved >= self.min_interval_s

    def elapsed(self) -> float:
        """Seconds this trial has trained, all its runs together."""
        return self.elapsed_before + time.monotonic() - self.started


class TrialMonitor:
    """What the callback does at each Trainer event (the TrainerCallback is this plus transformers' base).

    `objective` gives `clean_metrics`, `evaluation_extras` and `budget`; `report(step, metrics)` returns
    True to prune.
    """

    def __init__(self, objective, report, on_log=None, *, on_evaluate=None, checkpoints=None,
                 scores_dir=None) -> None:
        self.objective = objective
        self.scores_dir = scores_dir  # where each evaluation's per-example scores go (evaluation/scores.py)
        self.report = report
        self.on_evaluate_hook = on_evaluate  # (step, model): sees the model at each evaluation
        self.checkpoints: Checkpointing | None = checkpoints
        self.pending: tuple[int, dict[str, float]] | None = None  # an evaluation reported once its checkpoint exists
        self.log_sink = on_log  # training logs (loss, learning rate) for trackers
        self.history: list[tuple[int, dict[str, float]]] = []
        self.pruned_at: int | None = None
        self.paused_at: int | None = None  # the backend paused it here: the checkpoint of this step is kept
        self.diverged: str | None = None
        self.costs = CostMeter()
        self.train_losses: list[float] = []  # logged since the previous evaluation

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.costs.start(model)
        if self.checkpoints is not None and self.checkpoints.retune:
            checkpoint.retune(optimizer, lr_scheduler, args)

    def on_step_end(self, args, state, control, **kwargs):
        # The optimizer's state appears in the first steps, and evaluations sample again; a sample costs
        # ~0.1 ms, which at every step was 0.5 % of a demo trial (docs/benchmarks.md).
        if state.global_step <= 2:
            self.costs.sample()
        if state.global_step >= state.max_steps:
            control.should_save = False  # the budget is spent: nothing left to resume
        elif control.should_save and self.checkpoints is not None and not self.checkpoints.due():
            control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        # Early stopping makes Trainer track a "best" checkpoint, and at the end of train() it deletes
        # every other one when save_total_limit is 1 -- the newest, which a resume needs, included.
        state.best_model_checkpoint = None
        if self.checkpoints is not None and state.is_world_process_zero:  # one writer: Trainer's own, rank 0
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            checkpoint.write_checkpoint_state(folder, state.global_step, params=self.checkpoints.params,
                                              elapsed_s=self.checkpoints.elapsed(), **self.checkpoints.about)
            self.checkpoints.last_saved = time.monotonic()
            if self.checkpoints.on_checkpoint is not None:
                self.checkpoints.on_checkpoint(state.global_step, folder)
        if self.pending is not None:
            step, metrics = self.pending
            self.pending = None
            self._report(step, metrics, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.log_sink is not None and "loss" in logs:
            train = {f"train_{k}" if k == "loss" else k: float(v) for k, v in logs.items()
                     if k in ("loss", "learning_rate", "grad_norm") and isinstance(v, (int, float))}
            self.log_sink(state.global_step, train)
        loss = logs.get("loss")
        if loss is not None:
            self.train_losses.append(float(loss))
        if loss is not None and not math.isfinite(loss):
            self.diverged = f"training loss became {loss} at step {state.global_step}"
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        clean = self.objective.clean_metrics(metrics or {})
        started = time.perf_counter()
        extras = self.objective.evaluation_extras(kwargs["model"], state.global_step)
        if extras:
            # What the metrics beyond the loss cost this evaluation (answer metrics, decoding, lm-eval tasks).
            clean["task_metrics_s"] = time.perf_counter() - started
        clean.update(extras)
        if self.scores_dir is not None and self.objective.per_example and state.is_world_process_zero:
            # Before the report: a paired pruner deciding on this evaluation reads them.
            scores.write_scores(self.scores_dir, state.global_step, self.objective.per_example)
        clean.update(self.costs.metrics(kwargs["model"], metrics or {}))
        if self.train_losses and "eval_loss" in clean:
            # Overfitting indicator: validation loss minus the mean training loss of the steps since the
            # previous evaluation (dropout and label smoothing raise the training side a little).
            clean["interval_train_loss"] = sum(self.train_losses) / len(self.train_losses)
            clean["train_eval_gap"] = clean["eval_loss"] - clean["interval_train_loss"]
        self.train_losses = []
        if metrics is not None and "eval_loss" in metrics:
            # Trainer's own dict gets the added metrics too, so EarlyStoppingCallback (after this one) can
            # watch any of them, e.g. perplexity or bleu.
            for name, value in clean.items():
                metrics.setdefault(name if name.startswith("eval_") else f"eval_{name}", value)
        step = state.global_step
        self.history.append((step, clean))
        if not math.isfinite(clean.get("eval_loss", 0.0)):
            self.diverged = f"eval loss became {clean['eval_loss']} at step {step}"
            control.should_training_stop = True
            return
        if self.on_evaluate_hook is not None and self.report is not None:
            self.on_evaluate_hook(step, kwargs["model"])
        if self.checkpoints is not None and self.checkpoints.on_checkpoint is not None and control.should_save:
            # Trainer saves right after this: the report waits for the checkpoint (on_save), so a
            # backend that keeps the checkpoint with the result (Ray) gets the two together.
            self.pending = (step, clean)
        else:
            self._report(step, clean, control)
            if self.pruned_at is not None:
                control.should_save = False  # a pruned trial is never resumed

    def _report(self, step: int, metrics: dict[str, float], control) -> None:
        # The pruner hears every evaluation, but a trial that has trained its whole budget completes:
        # stopping it now would save nothing and would hide a finished result.
        decision = self.report(step, metrics) if self.report is not None else False
        if not decision or step >= self.objective.budget.max_steps:
            return
        control.should_training_stop = True
        if decision == PAUSE and self.checkpoints is not None:
            # Paused: this step's checkpoint is written whatever the interval (Trainer saves after this event).
            self.paused_at = step
            control.should_save = True
        else:
            self.pruned_at = step


def rank_agreement() -> list:
    """[RankAgreement()] in a process group of several ranks (a distributed trial), else []."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return []
    return [_agreement_class()()]


@functools.cache
def _agreement_class() -> type:
    import torch.distributed as dist
    from transformers import TrainerCallback

    class RankAgreement(TrainerCallback):
        """At every evaluation, every rank of a distributed trial takes rank 0's save and stop decisions.

        Saving a checkpoint runs collectives (Trainer gathers the FLOP count, FSDP the weights), so ranks that
        decide differently wait on different collectives for ever. Each rank decides alone on its own clock
        (`Checkpointing.due`: the checkpoint interval) and its own callbacks (early stopping): Trainer's last
        callback makes the decision rank 0's, before Trainer acts on it (it saves right after evaluating).
        """

        def on_evaluate(self, args, state, control, **kwargs):
            decisions = [control.should_save, control.should_training_stop]
            dist.broadcast_object_list(decisions, src=0)
            control.should_save, control.should_training_stop = decisions

    return RankAgreement


@functools.cache
def _callback_class() -> type:
    from transformers import TrainerCallback

    class ReportingCallback(TrialMonitor, TrainerCallback):
        """Sends every evaluation to the backend and stops training when it says prune or the loss is NaN."""

    return ReportingCallback


class CostMeter:
    """What a trial costs (COST_METRICS), measured as it trains.

    peak_memory_mb: on a GPU, torch's peak allocation since the trial started; on a CPU, the worker
    process's peak resident memory, sampled when training starts, after the first two steps and at
    every evaluation (the base model included: a comparison between trials, not an absolute
    footprint of the adapter).
    """

    def __init__(self) -> None:
        self.peak_rss = 0
        self.trainable: int | None = None
        self._process = None

    def start(self, model) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            self._process = psutil.Process()
        self.trainable = None
        self.sample()

    def sample(self) -> None:
        if self._process is not None:
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def metrics(self, model, raw: dict) -> dict[str, float]:
        import torch

        if self.trainable is None and model is not None:
            self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.sample()
        costs: dict[str, float] = {}
        if self.trainable is not None:
            costs["trainable_params"] = float(self.trainable)
        if torch.cuda.is_available():
            costs["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        elif self.peak_rss:
            costs["peak_memory_mb"] = self.peak_rss / 2**20
        speed = raw.get("eval_samples_per_second")
        if speed:
            costs["latency_ms"] = 1000.0 / float(speed)
        return costs
