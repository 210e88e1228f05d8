"""Reading a study, whichever backend wrote it: `status`, `best`, `show`, `importance`, `report`, `dashboard`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from objectives.engine.callback import COST_METRICS
from spaces import ConfigError

from ..observers.tracking import make_tracker
from ..results.dashboard import run_dashboard
from ..results.report import importance_table, write_report
from ..results.tables import (
    accepted_lines,
    best_rows,
    format_value,
    get_trial,
    left_out_line,
    paused_line,
    render_top_table,
    study_status,
    trial_details,
)
from ..settings import TrackingConfig
from ..store import record as keys
from . import _common


def cmd_status(args: argparse.Namespace) -> int:
    """Counts by state, best value so far, elapsed time and trials per hour; works while a sweep runs."""
    study = _common.study_of(args)
    status = study_status(study)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    counts = status["counts"]
    console = _common.console(args)
    console.print(f"Study [bold]{status['study']}[/]: {status['total']} trials — " + ", ".join(
        f"{n} {state}" for state, n in counts.items()))
    best = status["best"]
    if "pareto_front" in status:
        console.print(f"Pareto front ({status['metric']}): trials {status['pareto_front']}")
    else:
        console.print(f"Best {status['metric']}: " + (f"{format_value(best['value'])} (trial {best['number']})"
                                                      if best else "— (no completed trial yet)"))
    paused = paused_line(study)
    if paused:
        console.print(f"[cyan]{paused}[/]")
    rate = status["trials_per_hour"]
    console.print(f"Elapsed {status['elapsed_s'] / 60:.1f} min, "
                  f"{format_value(rate) if rate else '—'} finished trials per hour")
    _print_accepted(console, accepted_lines(study))
    return 0


def _print_accepted(console, lines: list[str]) -> None:
    """The data-check errors the launch accepted: every result of the study stands on that data."""
    if lines:
        console.print(f"[yellow]Data findings accepted at launch (dataset.checks):[/] {len(lines)}", markup=True)
    for line in lines:
        console.print(f"  [yellow]accepted[/] {line}", markup=True, highlight=False)


def cmd_best(args: argparse.Namespace) -> int:
    """The top trials: number, value, searched params, steps reached, duration (Pareto front if multi-objective)."""
    study = _common.study_of(args)
    rows = best_rows(study, args.top)
    if args.json:
        print(json.dumps(rows, indent=2))
        left_out = left_out_line(study)
        if left_out:  # on stderr: scripts read the rows from stdout, as before
            print(left_out, file=sys.stderr)
        return 0
    if not rows:
        raise ConfigError("the study has no completed trial yet", key="study", value=study.study_name,
                          hint="Check progress with `ftsweep status`.")
    console = _common.console(args)
    console.print(render_top_table(study, k=args.top))
    paused = paused_line(study)
    if paused:
        console.print(f"[cyan]{paused}[/]")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Everything about one trial: params, learning curve, metrics, duration, state, failure reason."""
    study = _common.study_of(args)
    details = trial_details(get_trial(study, args.trial))
    if args.json:
        print(json.dumps(details, indent=2, default=str))
        return 0
    console = _common.console(args)
    value = format_value(details["value"]) if details["value"] is not None else "—"
    if details["values"] is not None:
        value = ", ".join(format_value(v) for v in details["values"])
    duration = f"{details['duration_s']:.1f}s" if details["duration_s"] else "—"
    console.print(f"Trial [bold]{details['number']}[/]: {details['state']}, value {value}, {duration}")
    _print_accepted(console, accepted_lines(study))
    if details["fail_reason"]:
        console.print(f"[red]Failure:[/] {escape(details['fail_reason'])}", markup=True)
    if details["constraints"]:
        console.print("Constraints (<= 0 is satisfied): " + ", ".join(
            f"{k}: {format_value(v)}" for k, v in details["constraints"].items()))
    if details["retry"]:
        console.print(f"Retry policy ({details['failure_cause']}): {details['retry']}")
    if details["retry_of"] is not None:
        changed = ", ".join(f"{k}={v}" for k, v in (details["overrides"] or {}).items())
        console.print(f"Retry {details['attempt']} of trial {details['retry_of']} ({details['retry_cause']})"
                      + (f" with {changed}" if changed else ""))
    params = Table(title="Params (searched ones marked *)")
    params.add_column("name")
    params.add_column("value", justify="right")
    for name, v in details["params"].items():
        params.add_row(name + (" *" if name in details["searched"] else ""), format_value(v))
    console.print(params)
    if details["eval_history"]:
        history = details["eval_history"]
        # The curve shows what the sweep optimizes and records, and the overfitting gap; every other
        # metric (costs, the task's other scores) is in "Final metrics" below, so the table stays readable.
        record = study.user_attrs.get(keys.STUDY_SWEEP, {})
        wanted = ["eval_loss", *(study.metric_names or []), *record.get("record_metrics", []), "train_eval_gap"]
        names = [k for k in dict.fromkeys(wanted) if k in history[0]] or [
            k for k in history[0] if k not in ("step", "interval_train_loss", *COST_METRICS)]
        curve = Table(title="Evaluations (learning curve)")
        curve.add_column("step", justify="right")
        for name in names:
            curve.add_column(name, justify="right")
        for row in history:
            curve.add_row(str(row["step"]), *[format_value(row.get(n)) for n in names])
        console.print(curve)
    if details["metrics"]:
        console.print("Final metrics: " + ", ".join(f"{k}={format_value(v)}" for k, v in details["metrics"].items()))
    console.print("Outputs: trials keep no checkpoint; `ftsweep export STUDY --trial N` writes this trial's config.")
    return 0


def cmd_importance(args: argparse.Namespace) -> int:
    """Parameter importances (fANOVA by default) as a table."""
    _common.console(args).print(importance_table(_common.study_of(args), evaluator=args.evaluator))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Optuna's plots as PNG files plus one self-contained HTML page that opens offline."""
    study = _common.study_of(args)
    files = write_report(study, Path(args.out), evaluator=args.evaluator)
    console = _common.console(args)
    if args.wandb:
        tracker = make_tracker(TrackingConfig(wandb=args.wandb, **_tracking_of(study)), Path(args.out),
                               say=lambda text: console.print(text, markup=False))
        tracker.sweep_end(study, Path(args.out))
    for path in files.written:
        console.print(f"wrote {path}")
    for note in files.notes:
        console.print(f"[yellow]skipped:[/] {note}")
    console.print(f"Open {files.html} in a browser (works offline).")
    return 0


def _tracking_of(study) -> dict:
    """project/entity/group/tags of the sweep that wrote the study, for W&B runs made afterwards."""
    tracking = (study.user_attrs.get(keys.STUDY_SWEEP) or {}).get("tracking") or {}
    return {k: tracking[k] for k in ("project", "entity", "group", "tags") if tracking.get(k) is not None}


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the study storage (127.0.0.1 by default)."""
    run_dashboard(_common.resolve_storage(args.storage_or_study), host=args.host, port=args.port,
                  console=_common.console(args))
    return 0


def _status_arguments(p):
    _common.add_study_arguments(p)
    _common.add_json_flag(p)


def _best_arguments(p):
    _common.add_study_arguments(p)
    p.add_argument("--top", type=int, default=10, help="how many trials (default 10)")
    _common.add_json_flag(p)


def _show_arguments(p):
    _common.add_study_arguments(p)
    p.add_argument("trial", type=int, help="trial number")
    _common.add_json_flag(p)


def _evaluator_flag(p):
    p.add_argument("--evaluator", choices=["fanova", "mdi", "ped_anova"], default="fanova",
                   help="Optuna importance evaluator (default fanova)")


def _importance_arguments(p):
    _common.add_study_arguments(p)
    _evaluator_flag(p)


def _report_arguments(p):
    _common.add_study_arguments(p)
    p.add_argument("--out", required=True, help="directory for the PNGs and report.html")
    p.add_argument("--wandb", nargs="?", const="auto", choices=["auto", "online", "offline"],
                   help="also log the sweep run (trial table, best config, pictures) to W&B")
    _evaluator_flag(p)


def _dashboard_arguments(p):
    p.add_argument("storage_or_study", help="a storage URL, a study file (.journal, .db), a sweep file or a study name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)


STATUS = _common.Command("status", "counts by state, best so far, throughput", _status_arguments, cmd_status)
BEST = _common.Command("best", "table of the top trials (--json for scripts)", _best_arguments, cmd_best)
SHOW = _common.Command("show", "everything about one trial", _show_arguments, cmd_show)
IMPORTANCE = _common.Command("importance", "parameter importances as a table", _importance_arguments, cmd_importance)
REPORT = _common.Command("report", "PNG plots and an offline HTML report", _report_arguments, cmd_report)
DASHBOARD = _common.Command("dashboard", "serve optuna-dashboard on the study storage", _dashboard_arguments,
                            cmd_dashboard)
