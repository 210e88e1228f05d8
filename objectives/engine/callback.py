"""The Trainer callback that connects a trial's evaluations to the backend's pruner, and what a trial costs.

`transformers` is imported only when the first trial builds its callback (`reporting_callback`), so
importing `objectives` stays fast for the CLI.
"""

from __future__ import annotations

import functools
import math

from ..settings import Direction

# What a trial costs, measured at every evaluation of every task: natural targets of a second
# objective or a constraint ("maximize F1, minimize latency").
COST_METRICS: dict[str, Direction] = {
    "trainable_params": "minimize",  # the adapter's size: parameters with requires_grad
    "peak_memory_mb": "minimize",  # GPU: torch.cuda.max_memory_allocated; CPU: peak resident memory (sampled)
    "latency_ms": "minimize",  # evaluation time per example (forward pass, batched)
}


def reporting_callback(objective, report, on_log=None, *, on_evaluate=None, step_offset: int = 0):
    """A `TrainerCallback` that sends every evaluation to `report` and stops training when it says
    prune or the loss is NaN (see `TrialMonitor`)."""
    return _callback_class()(objective, report, on_log, on_evaluate=on_evaluate, step_offset=step_offset)


class TrialMonitor:
    """What the callback does at each Trainer event (the TrainerCallback is this plus transformers' base).

    `objective` gives `clean_metrics`, `evaluation_extras` and `budget`; `report(step, metrics)` returns
    True to prune.
    """

    def __init__(self, objective, report, on_log=None, *, on_evaluate=None, step_offset: int = 0) -> None:
        self.objective = objective
        self.report = report
        self.on_evaluate_hook = on_evaluate  # (step, model): e.g. checkpoint the adapter before reporting
        self.step_offset = step_offset  # a resumed trial counts steps from its checkpoint
        self.log_sink = on_log  # training logs (loss, learning rate) for trackers
        self.history: list[tuple[int, dict[str, float]]] = []
        self.pruned_at: int | None = None
        self.diverged: str | None = None
        self.costs = CostMeter()
        self.train_losses: list[float] = []  # logged since the previous evaluation

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.costs.start(model)

    def on_step_end(self, args, state, control, **kwargs):
        # The optimizer's state appears in the first steps, and evaluations sample again; a sample costs
        # ~0.1 ms, which at every step was 0.5 % of a demo trial (docs/benchmarks.md).
        if state.global_step <= 2:
            self.costs.sample()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.log_sink is not None and "loss" in logs:
            train = {f"train_{k}" if k == "loss" else k: float(v) for k, v in logs.items()
                     if k in ("loss", "learning_rate", "grad_norm") and isinstance(v, (int, float))}
            self.log_sink(self.step_offset + state.global_step, train)
        loss = logs.get("loss")
        if loss is not None:
            self.train_losses.append(float(loss))
        if loss is not None and not math.isfinite(loss):
            self.diverged = f"training loss became {loss} at step {self.step_offset + state.global_step}"
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        clean = self.objective.clean_metrics(metrics or {})
        clean.update(self.objective.evaluation_extras(kwargs["model"]))
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
        step = self.step_offset + state.global_step
        self.history.append((step, clean))
        if not math.isfinite(clean.get("eval_loss", 0.0)):
            self.diverged = f"eval loss became {clean['eval_loss']} at step {step}"
            control.should_training_stop = True
            return
        if self.on_evaluate_hook is not None and self.report is not None:
            self.on_evaluate_hook(step, kwargs["model"])
        # The pruner hears every evaluation, but a trial that has trained its whole budget completes:
        # stopping it now would save nothing and would hide a finished result.
        if self.report is not None and self.report(step, clean) and step < self.objective.budget.max_steps:
            self.pruned_at = step
            control.should_training_stop = True


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
