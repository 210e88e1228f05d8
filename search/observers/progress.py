"""Live progress of a sweep: done/total, pruned, failed, best so far, ETA — and one line per trial.

Off a terminal (a SLURM or CI log, `nohup`, a pipe) nothing is redrawn: one plain line per finished trial,
and the totals in one line at the end."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..results.tables import SHORT_NAMES, format_value
from ..store.record import DURATION, PAUSED_AT, counts_toward_budget, superseded_numbers


class SweepProgress:
    """A backend listener that draws a rich progress bar and prints a line as each trial ends.
    Where the console cannot redraw a line in place (a file, a pipe), it prints only those lines and,
    at the end, the totals the bar would have shown.

    Example:
        >>> from search.backends import get_backend
        >>> with SweepProgress(Console(quiet=True), metric="eval_loss") as progress:
        ...     outcome = get_backend("optuna")(sweep, listener=progress).run()  # the sweep is already done
        >>> outcome.counts
        {'complete': 2}
    """

    def __init__(self, console: Console, *, metric: str) -> None:
        self.console = console
        self.metric = metric
        self.metric_names = metric.split(", ")  # several for a multi-objective sweep (Sweep.metric_label)
        self.multi = len(self.metric_names) > 1
        self.pareto: int | None = None  # multi-objective: trials on the Pareto front
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        # In a log file a live bar is noise: its redraws are control codes, and rich cuts it to 80 columns.
        self.live = redraws_in_place(console)
        self.stopped = False
        self.task = None
        self.counts = {"pruned": 0, "failed": 0}
        self.best: float | None = None

    def __enter__(self) -> "SweepProgress":
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End the display: the bar's last state stays on screen; off a terminal, one line of totals."""
        if self.stopped:
            return
        self.stopped = True
        if self.live:
            self.progress.stop()
        elif self.task is not None:
            task = self.progress.tasks[self.task]
            done = f"{task.completed:.0f}/{task.total:.0f}" if task.total is not None else f"{task.completed:.0f}"
            elapsed = dt.timedelta(seconds=int(task.elapsed or 0))
            self.console.print(f"{task.description}: {done} trials · {self._stats()} · {elapsed}", markup=False)

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(**details)

    def _on_note(self, text: str) -> None:
        self.console.print(text, markup=False)

    def _on_setup(self, model: str) -> None:
        self.console.print(f"Loading [cyan]{model}[/] and tokenizing data (once per worker)…")

    def _on_start(self, study, done: int, remaining: int | None, requeued: list[int], total: int | None) -> None:
        trials = study.get_trials(deepcopy=False)
        self.counts["pruned"] = sum(t.state == TrialState.PRUNED for t in trials)
        superseded = superseded_numbers(trials)
        self.counts["failed"] = sum(t.state == TrialState.FAIL and counts_toward_budget(t, superseded) for t in trials)
        if any(t.state == TrialState.COMPLETE for t in trials):
            if len(study.directions) > 1:
                self.pareto = len(study.best_trials)
            else:
                self.best = study.best_value
        if done:
            note = f" ({len(requeued)} interrupted trial(s) queued again: {requeued})" if requeued else ""
            self.console.print(f"Resuming study [cyan]{study.study_name}[/]: {done} trial(s) already finished{note}.")
        self.task = self.progress.add_task(study.study_name, total=total, completed=done, stats=self._stats())

    def _on_trial_report(self, trial, step: int, metrics: dict[str, float]) -> None:
        value = ", ".join(format_value(metrics.get(name)) for name in self.metric_names)
        self.progress.update(self.task, stats=self._stats(f"trial {trial.number} step {step}: {value}"))

    def _on_trial_end(self, study, trial) -> None:
        state = trial.state
        paused = state == TrialState.PRUNED and PAUSED_AT in trial.user_attrs
        if paused:  # its continuation counts when it ends (search/store/pausing.py)
            self.console.print(self._line(trial))
            return
        if state == TrialState.PRUNED:
            self.counts["pruned"] += 1
        elif state == TrialState.FAIL and counts_toward_budget(trial):
            self.counts["failed"] += 1
        if state == TrialState.COMPLETE and len(study.directions) > 1:
            self.pareto = len(study.best_trials)
        elif state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
            better = self.best is None or (
                trial.value < self.best if study.direction.name == "MINIMIZE" else trial.value > self.best
            )
            self.best = trial.value if better else self.best
        self.console.print(self._line(trial))
        if counts_toward_budget(trial):
            self.progress.advance(self.task)
        self.progress.update(self.task, stats=self._stats())

    def _stats(self, current: str = "") -> str:
        best = format_value(self.best) if self.best is not None else "—"
        best = f"Pareto front {self.pareto or 0}" if self.multi else f"best {self.metric} {best}"
        text = f"pruned {self.counts['pruned']} · failed {self.counts['failed']} · {best}"
        return f"{text} · {current}" if current else text

    def _line(self, trial) -> str:
        style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(trial.state.name, "white")
        params = escape(", ".join(f"{SHORT_NAMES.get(k, k)}={format_value(v)}" for k, v in trial.params.items()))
        if trial.state == TrialState.COMPLETE:
            outcome = ", ".join(f"{name}={format_value(v)}" for name, v in zip(self.metric_names, trial.values))
        elif trial.state == TrialState.PRUNED:
            step = max(trial.intermediate_values) if trial.intermediate_values else 0
            outcome = f"at step {step} ({format_value(trial.intermediate_values.get(step))})"
            if PAUSED_AT in trial.user_attrs:
                style, outcome = "cyan", f"{outcome}, checkpoint kept"
        else:
            # Escaped: a reason is an exception's text, and e.g. gloo's ("[.../pair.cc:537] Read error") reads as markup.
            outcome = escape(trial.user_attrs.get("fail_reason", "failed"))
        # The trial's own training time (all its runs, from where it ran), not Optuna's ask-to-tell
        # span, which under Ray includes the time a trial waited for a worker.
        seconds = trial.user_attrs.get(DURATION)
        if seconds is None:
            seconds = trial.duration.total_seconds() if trial.duration else 0.0
        state = "paused" if trial.state == TrialState.PRUNED and PAUSED_AT in trial.user_attrs else trial.state.name.lower()
        return f"  trial {trial.number:>3} [{style}]{state:<8}[/] {outcome}  [dim]{params}  {seconds:.1f}s[/]"


def redraws_in_place(console: Console) -> bool:
    """Whether `console` can show a live bar: a terminal that takes control codes (or Jupyter), not a file
    or a pipe. FORCE_COLOR / TTY_COMPATIBLE=1 make rich call a CI log a terminal; colours are welcome
    there, redraws are not, so the stream itself must be a terminal too.

    Example:
        >>> import io
        >>> redraws_in_place(Console(file=io.StringIO(), force_terminal=True))
        False
    """
    if console.is_jupyter:
        return True
    if not console.is_terminal or console.is_dumb_terminal:
        return False
    try:
        return console.file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
