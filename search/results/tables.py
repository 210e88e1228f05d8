"""Reading results back out of a study: rows for tables, sorted best first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datetime as dt

import optuna
from optuna.trial import TrialState

from spaces import ConfigError

from ..store import record
from ..store.pausing import paused_trials
from ..store.record import is_feasible
from ..store.relaunch import STUDY_REVISIONS, latest_revision, trial_revision

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
    values: list[float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the final evaluation's, every metric computed


def trial_row(trial: optuna.trial.FrozenTrial) -> TrialRow:
    steps = max(trial.intermediate_values) if trial.intermediate_values else None
    if steps is None and "steps" in trial.user_attrs.get(record.METRICS, {}):
        steps = int(trial.user_attrs[record.METRICS]["steps"])  # multi-objective trials keep no intermediate values
    duration = trial.user_attrs.get(record.DURATION)
    if duration is None and trial.duration is not None:
        duration = trial.duration.total_seconds()
    complete = trial.state == TrialState.COMPLETE
    multi = trial.values is not None and len(trial.values) > 1
    value = (trial.values[0] if multi else trial.value) if complete else (
        trial.intermediate_values[steps] if steps is not None else None
    )
    return TrialRow(
        number=trial.number, state=trial.state.name, value=value,
        params=record.config_of(trial), steps=steps, duration_s=duration,
        fail_reason=fail_reason(trial), values=list(trial.values) if complete and multi else None,
        metrics=dict(trial.user_attrs.get(record.METRICS) or {}),
    )


def comparable_trials(study: optuna.Study) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The completed trials that rank together: those of the study's latest sweep revision (a relaunch with
    `--accept-changes` starts one: search/store/relaunch.py); and how many completed trials of older
    revisions were left out, which ran under other settings (budget, data, seed...).

    Example:
        >>> trials, left_out = comparable_trials(study)  # the doctest study was launched once: revision 0
        >>> len(trials), left_out
        (2, 0)
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    latest = latest_revision(study.user_attrs)
    comparable = [t for t in complete if trial_revision(t) == latest]
    return comparable, len(complete) - len(comparable)


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """A multi-objective study's Pareto front among its comparable trials (`comparable_trials`), feasible
    ones only as for Optuna's `best_trials`, in trial order."""
    comparable, left_out = comparable_trials(study)
    if not left_out:
        return sorted(study.best_trials, key=lambda t: t.number)
    signs = [-1 if d == optuna.study.StudyDirection.MAXIMIZE else 1 for d in study.directions]
    feasible = [t for t in comparable if is_feasible(t)]
    costs = {t.number: [s * v for s, v in zip(signs, t.values)] for t in feasible}

    def dominated(trial) -> bool:
        mine = costs[trial.number]
        return any(all(o <= m for o, m in zip(other, mine)) and other != mine for other in costs.values())

    return sorted((t for t in feasible if not dominated(t)), key=lambda t: t.number)


def left_out_line(study: optuna.Study) -> str | None:
    """What `best`, `export` and the top tables leave out: completed trials of older sweep revisions; or None.

    Example:
        >>> left_out_line(study) is None  # one launch, one revision
        True
    """
    _, left_out = comparable_trials(study)
    if not left_out:
        return None
    latest = (study.user_attrs.get(STUDY_REVISIONS) or [{}])[-1]
    changed = "; ".join(f"{c['key']}: {c['was']} → {c['now']}" for c in latest.get("changes", []))
    return (f"{left_out} completed trial(s) of earlier sweep revisions left out: they ran under other settings "
            f"(revision {latest.get('revision')}, {latest.get('at', '')}: {changed}). "
            f"`ftsweep show {study.study_name} N` still shows each.")


def top_trials(study: optuna.Study, k: int = 10) -> list[TrialRow]:
    """Completed trials of the latest sweep revision (`comparable_trials`), best first (pruned ones are never
    'best': they did not finish their budget). For a multi-objective study: the Pareto front, in trial order."""
    if len(study.directions) > 1:
        return [trial_row(t) for t in pareto_front(study)[:k]]
    complete, _ = comparable_trials(study)
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    # Trials that break a sweep's constraints rank after every feasible one (as for Optuna's best_trial).
    complete.sort(key=lambda t: (not is_feasible(t), sign * t.value))
    return [trial_row(t) for t in complete[:k]]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if (abs(value) < 1e-2 and value != 0) or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def render_top_table(study: optuna.Study, *, k: int = 10, title: str | None = None):
    """A rich Table of the top-k completed trials."""
    from rich.table import Table

    rows = top_trials(study, k)
    metric = study.user_attrs.get(record.STUDY_METRIC, "value")
    multi = len(study.directions) > 1
    names = list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))]) if multi else [metric]
    goal = ", ".join(f"{d.name.lower()} {n}" for d, n in zip(study.directions, names))
    default_title = (f"Pareto front of '{study.study_name}' ({len(rows)} trials; {goal})" if multi
                     else f"Top {len(rows)} trials of '{study.study_name}' ({goal})")
    constraints = study.user_attrs.get(record.STUDY_CONSTRAINTS) or []
    caption = [f"constraints: {'; '.join(constraints)}"] if constraints else []
    caption += [line for line in [left_out_line(study)] if line]
    table = Table(title=title or default_title, caption="\n".join(caption) or None)
    table.add_column("#", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    # The loss and the recorded metrics beside what is optimized: whether the loss tracks what the user picks by.
    recorded = (study.user_attrs.get(record.STUDY_SWEEP) or {}).get("record_metrics") or []
    beside = [m for m in dict.fromkeys([*recorded, "eval_loss"])
              if m not in names and any(m in row.metrics for row in rows)]
    for name in beside:
        table.add_column(name, justify="right", style="dim")
    searched = sorted({name for row in rows for name in row.params if name in _searched(study)})
    for name in searched:
        table.add_column(SHORT_NAMES.get(name, name), justify="right")
    table.add_column("steps", justify="right")
    table.add_column("time", justify="right")
    if constraints:
        table.add_column("feasible")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)} if constraints else {}
    for row in rows:
        table.add_row(
            str(row.number), *([format_value(v) for v in row.values] if multi else [format_value(row.value)]),
            *[format_value(row.metrics.get(name, "—")) for name in beside],
            *[format_value(row.params.get(name, "—")) for name in searched],
            str(row.steps or "—"), f"{row.duration_s:.1f}s" if row.duration_s else "—",
            *(["yes" if is_feasible(trials[row.number]) else "[red]no[/]"] if constraints else []),
        )
    return table


def _searched(study: optuna.Study) -> set[str]:
    names: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        names.update(trial.params)
    return names


def _states(study: optuna.Study) -> dict[str, int]:
    counts = record.state_counts(study.get_trials(deepcopy=False))
    return {label: counts.get(state, 0) for state, label in (
        ("complete", "complete"), ("pruned", "pruned"), ("fail", "failed"), ("running", "running"),
        ("waiting", "waiting"), ("paused", "paused"), ("resumed", "resumed"))}


def study_status(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, best value, elapsed time and throughput; works while a sweep is running.

    Example:
        >>> study_status(study)["counts"]
        {'complete': 2, 'pruned': 0, 'failed': 0, 'running': 0, 'waiting': 0, 'paused': 0, 'resumed': 0}
    """
    trials = study.get_trials(deepcopy=False)
    counts = _states(study)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    elapsed = 0.0
    if starts:
        last = dt.datetime.now() if counts["running"] or not ends else max(ends)
        elapsed = max((last - min(starts)).total_seconds(), 0.0)
    finished = counts["complete"] + counts["pruned"] + counts["failed"]
    best = pareto = None
    if counts["complete"] and len(study.directions) == 1:
        rows = top_trials(study, 1)  # feasible first: constraints as Optuna's best_trial reads them
        best = {"number": rows[0].number, "value": rows[0].value}
    elif counts["complete"]:
        pareto = [t.number for t in pareto_front(study)]
    return {
        "study": study.study_name,
        "metric": study.user_attrs.get(record.STUDY_METRIC, "value"),
        "directions": [d.name.lower() for d in study.directions],
        "counts": counts,
        "total": len(trials),
        "best": best,
        **({"pareto_front": pareto} if pareto is not None else {}),
        "elapsed_s": elapsed,
        "trials_per_hour": finished / (elapsed / 3600) if elapsed > 0 else None,
        "accepted_findings": study.user_attrs.get(record.STUDY_ACCEPTED, []),
        "paused": [{"number": p.origin.number, "step": p.step} for p in paused_trials(study)],
    }


def paused_line(study: optuna.Study) -> str | None:
    """What waits to be resumed (a pausing scheduler's paused trials, search/store/pausing.py), best first, or None.

    Example:
        >>> paused_line(study) is None  # the doctest study ran without a pausing scheduler
        True
    """
    paused = paused_trials(study)
    if not paused:
        return None
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    ranked = sorted(paused, key=lambda p: sign * p.origin.intermediate_values.get(p.step, float("inf")))
    shown = ", ".join(f"#{p.origin.number} at step {p.step} ({format_value(p.origin.intermediate_values.get(p.step))})"
                      for p in ranked[:5])
    return f"{len(paused)} paused trial(s) may still be resumed: {shown}{' …' if len(paused) > 5 else ''}"


def accepted_lines(study: optuna.Study) -> list[str]:
    """One line per data-check error the launch accepted (`dataset.checks`), for `status` and `show`.

    Example:
        >>> accepted_lines(study)  # a study launched on data that passed every check
        []
    """
    return [f["check"] + (f" ({f['split']})" if f.get("split") else "") + f": {f['message']}"
            for f in study.user_attrs.get(record.STUDY_ACCEPTED, [])]


def best_rows(study: optuna.Study, k: int = 10) -> list[dict[str, Any]]:
    """JSON-ready rows of the top-k completed trials (the Pareto front for multi-objective studies)."""
    return [_row_dict(row) for row in top_trials(study, k)]


def _row_dict(row: TrialRow) -> dict[str, Any]:
    data = {"number": row.number, "state": row.state.lower(), "value": row.value, "params": row.params,
            "steps": row.steps, "duration_s": row.duration_s, "metrics": row.metrics}
    if row.values is not None:
        data["values"] = row.values
    return data


def get_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The trial with that number, or a ConfigError listing the numbers that exist."""
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.number == number:
            return trial
    numbers = [t.number for t in trials]
    allowed = f"{numbers[0]}..{numbers[-1]}" if numbers else "(the study has no trials)"
    raise ConfigError(f"study '{study.study_name}' has no trial {number}", key="trial", value=number, allowed=allowed)


def trial_details(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Everything recorded about one trial, JSON-ready."""
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.values[0] if trial.state == TrialState.COMPLETE and len(trial.values) == 1 else None,
        "values": list(trial.values) if trial.state == TrialState.COMPLETE and len(trial.values) > 1 else None,
        "constraints": trial.user_attrs.get(record.CONSTRAINTS),
        "params": record.config_of(trial),
        "searched": trial.params,
        "learning_curve": {int(k): v for k, v in sorted(trial.intermediate_values.items())},
        "eval_history": trial.user_attrs.get(record.EVAL_HISTORY, []),
        "metrics": trial.user_attrs.get(record.METRICS, {}),
        "duration_s": trial.user_attrs.get(record.DURATION, trial.duration.total_seconds() if trial.duration else None),
        "started": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "fail_reason": fail_reason(trial),
        "failure_cause": trial.user_attrs.get(record.FAILURE_CAUSE),
        "retry": trial.user_attrs.get(record.RETRY),  # what the retry policy did about this failure
        "retry_of": trial.user_attrs.get(record.RETRY_OF),
        "retry_cause": trial.user_attrs.get(record.RETRY_CAUSE),
        "attempt": trial.user_attrs.get(record.ATTEMPT),
        "overrides": trial.user_attrs.get(record.OVERRIDES),
        "worker": trial.user_attrs.get(record.WORKER),
    }


def fail_reason(trial: optuna.trial.FrozenTrial) -> str | None:
    """Why a FAIL trial failed. A trial failed by Optuna's heartbeat check carries no reason of its own
    (a finished trial cannot be written to); its worker went silent."""
    if trial.state != TrialState.FAIL:
        return trial.user_attrs.get(record.FAIL_REASON)
    return trial.user_attrs.get(record.FAIL_REASON) or (
        "preempted: no heartbeat from its worker within the grace period (killed, preempted or hung)")
