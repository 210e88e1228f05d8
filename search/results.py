"""Reading results back out of a study: rows for tables, sorted best first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

# Long parameter names shortened in tables, so a top-trials table fits a terminal.
SHORT_NAMES = {
    "learning_rate": "lr",
    "lr_scheduler_type": "sched",
    "warmup_ratio": "warmup",
    "weight_decay": "wd",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_alpha_ratio": "alpha/r",
    "lora_dropout": "drop",
    "target_modules": "targets",
    "peft_method": "peft",
}


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    steps: int | None
    duration_s: float | None
    fail_reason: str | None


def trial_row(trial: optuna.trial.FrozenTrial) -> TrialRow:
    steps = max(trial.intermediate_values) if trial.intermediate_values else None
    duration = trial.user_attrs.get("duration_s")
    if duration is None and trial.duration is not None:
        duration = trial.duration.total_seconds()
    value = trial.value if trial.state == TrialState.COMPLETE else (
        trial.intermediate_values[steps] if steps is not None else None
    )
    return TrialRow(
        number=trial.number, state=trial.state.name, value=value,
        params=trial.user_attrs.get("config", trial.params), steps=steps, duration_s=duration,
        fail_reason=trial.user_attrs.get("fail_reason"),
    )


def top_trials(study: optuna.Study, k: int = 10) -> list[TrialRow]:
    """Completed trials, best first (pruned ones are never 'best': they did not finish their budget)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: t.value, reverse=reverse)
    return [trial_row(t) for t in complete[:k]]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if (abs(value) < 1e-2 and value != 0) or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def render_top_table(study: optuna.Study, *, k: int = 10, title: str | None = None):
    """A rich Table of the top-k completed trials."""
    from rich.table import Table

    rows = top_trials(study, k)
    metric = study.user_attrs.get("metric", "value")
    table = Table(title=title or f"Top {len(rows)} trials of '{study.study_name}' ({study.direction.name.lower()} {metric})")
    table.add_column("#", justify="right")
    table.add_column(metric, justify="right")
    searched = sorted({name for row in rows for name in row.params if name in _searched(study)})
    for name in searched:
        table.add_column(SHORT_NAMES.get(name, name), justify="right")
    table.add_column("steps", justify="right")
    table.add_column("time", justify="right")
    for row in rows:
        table.add_row(
            str(row.number), format_value(row.value),
            *[format_value(row.params.get(name, "—")) for name in searched],
            str(row.steps or "—"), f"{row.duration_s:.1f}s" if row.duration_s else "—",
        )
    return table


def _searched(study: optuna.Study) -> set[str]:
    names: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        names.update(trial.params)
    return names
