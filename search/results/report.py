"""What a finished (or running) study says: parameter importances and a self-contained report.

Everything is read from the study store (`search/study.py`) and drawn with Optuna's own
visualization, so the pictures match what `optuna-dashboard` and Optuna's docs show:

    importances = compute_importances(study)            # {"learning_rate": 0.71, ...}
    console.print(importance_table(study))              # the same, as a rich table
    files = write_report(study, Path("runs/demo/report"))
    files.html                                           # report.html: opens offline, one file

The report needs the `report` extra (matplotlib for the PNGs, plotly for the interactive
figures): ``pip install 'ftsweep[report]'``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import datetime as _dt
import html
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from spaces import ConfigError

from ..store import record

if TYPE_CHECKING:
    from optuna.importance import BaseImportanceEvaluator
from .tables import format_value, top_trials

EVALUATORS = ("fanova", "mdi", "ped_anova")
INSTALL_HINT = "Fix: pip install 'ftsweep[report]'"

# The learning-rate × LoRA-rank contour: the one 2-D view every LoRA sweep asks for.
CONTOUR_PARAMS = ("learning_rate", "lora_r")


# ---------------------------------------------------------------------------------- importances


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials with finite values: the only ones Optuna's importances and plots use."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and all(math.isfinite(v) for v in t.values)]


def _first_objective(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """Optuna's `target=` for the first metric of a multi-objective study (None: the study's own value).
    Importances and the one-metric plots of a multi-objective study rate that first metric."""
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def _metric_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    if names is None:
        names = [str(study.user_attrs.get(record.STUDY_METRIC) or "value")] if len(study.directions) == 1 else [
            f"objective {i}" for i in range(len(study.directions))]
    return list(names)


def _varied_params(trials: list[FrozenTrial]) -> set[str]:
    """Params that took at least two values across ``trials`` (a constant explains nothing)."""
    seen: dict[str, set[str]] = {}
    for trial in trials:
        for name, value in trial.params.items():
            seen.setdefault(name, set()).add(repr(value))
    return {name for name, values in seen.items() if len(values) > 1}


def _make_evaluator(evaluator: str, seed: int) -> BaseImportanceEvaluator:
    from optuna.importance import (
        FanovaImportanceEvaluator,
        MeanDecreaseImpurityImportanceEvaluator,
        PedAnovaImportanceEvaluator,
    )

    if evaluator == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    if evaluator == "mdi":
        return MeanDecreaseImpurityImportanceEvaluator(seed=seed)
    if evaluator == "ped_anova":
        return PedAnovaImportanceEvaluator()  # deterministic: takes no seed
    raise ConfigError("unknown importance evaluator", key="evaluator", value=evaluator, allowed=list(EVALUATORS))


def compute_importances(study: optuna.Study, *, evaluator: str = "fanova", seed: int = 0) -> dict[str, float]:
    """How much each searched param explains the metric, summing to 1, most important first.

    Uses ``optuna.importance.get_param_importances`` on COMPLETE trials only. ``evaluator`` is
    "fanova" (default), "mdi" (random-forest impurity) or "ped_anova" (the only one that also
    rates conditional params, those absent from some trials). Raises ``ConfigError`` when there
    is nothing to rate: fewer than 2 completed trials, or no param that varied.

    Example:
        >>> importances = compute_importances(study)  # a study of 2 trials: enough to rate, not to trust
        >>> sorted(importances) == sorted(study.trials[0].params), round(sum(importances.values()), 6)
        (True, 1.0)
    """
    from optuna.importance import get_param_importances  # lazily: see _precomputed_class

    evaluator_obj = _make_evaluator(evaluator, seed)  # a bad name fails first, whatever the study
    complete = _finished(study)
    if len(complete) < 2:
        raise ConfigError(
            f"parameter importance needs at least 2 completed trials; this study has {len(complete)}",
            key="study", value=study.study_name, hint="Fix: run more trials (ftsweep launch resumes the study).",
        )
    varied = _varied_params(complete)
    if not varied:
        raise ConfigError(
            "no searched parameter took more than one value in the completed trials, so none can explain the metric",
            key="study", value=study.study_name,
        )
    target = _first_objective(study)
    if len({t.values[0] for t in complete}) == 1:
        raise ConfigError(f"every completed trial has the same value ({complete[0].values[0]}), so no param explains it",
                          key="study", value=study.study_name)
    with warnings.catch_warnings():
        # PED-ANOVA warns per param when few trials fall in a regime; the numbers are still its best estimate.
        warnings.simplefilter("ignore", UserWarning)
        try:
            importances = get_param_importances(study, evaluator=evaluator_obj, target=target)
        except RuntimeError as exc:
            # fANOVA's trees found no split: none of the params it rates varied (the metric did, see above).
            if "zero total variance" not in str(exc):
                raise
            importances = {}
    if not set(importances) & varied:
        # fANOVA and MDI rate only params present in every completed trial; conditional ones drop out.
        raise ConfigError(
            f"the {evaluator} evaluator rates only params present in every completed trial, "
            f"and none of those varied (varied: {', '.join(sorted(varied))})",
            key="evaluator", value=evaluator, hint="Fix: use evaluator 'ped_anova', which rates conditional params.",
        )
    return {name: float(value) for name, value in importances.items()}


@functools.cache
def _precomputed_class() -> type:
    """`optuna.importance` (fANOVA pulls in scikit-learn: ~1.3 s) is imported when importances are asked
    for, not whenever this module is: every launch imports it through the W&B sweep run."""
    from optuna.importance import BaseImportanceEvaluator

    class Precomputed(BaseImportanceEvaluator):
        """An evaluator that returns importances already computed: fANOVA refits its forest on every
        call, and this keeps the table, the PNG and the interactive plot showing the same numbers."""

        def __init__(self, importances: dict[str, float]) -> None:
            self.importances = importances

        def evaluate(self, study: optuna.Study, params: list[str] | None = None, *,
                     target: Callable[[FrozenTrial], float] | None = None) -> dict[str, float]:
            return {k: v for k, v in self.importances.items() if params is None or k in params}

    return Precomputed


def importance_table(study: optuna.Study, *, evaluator: str = "fanova", seed: int = 0):
    """A rich Table of ``compute_importances(study, evaluator=..., seed=...)``: param, importance, bar.

    Example:
        >>> importance_table(study, evaluator="ped_anova").row_count == len(study.trials[0].params)
        True
    """
    from rich.table import Table

    importances = compute_importances(study, evaluator=evaluator, seed=seed)
    of = f" for {_metric_names(study)[0]}" if len(study.directions) > 1 else ""
    table = Table(title=f"Parameter importance in '{study.study_name}'{of}",
                  caption=f"{evaluator}, {len(_finished(study))} completed trials")
    table.add_column("param")
    table.add_column("importance", justify="right")
    table.add_column("", min_width=20)
    for name, value in importances.items():
        table.add_row(name, f"{value:.3f}", "[cyan]" + "█" * round(value * 30) + "[/]")
    return table


# ------------------------------------------------------------------------------------ the report


@dataclass
class ReportFiles:
    """What ``write_report`` wrote: ``report.html`` and the PNGs, plus the plots it had to skip."""

    html: Path
    images: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # plot file name -> why it was not drawn

    @property
    def written(self) -> list[Path]:
        return [*self.images, self.html]

    @property
    def notes(self) -> list[str]:
        """One line per skipped plot, e.g. "contour_lr_rank.png: lora_r was not searched"."""
        return [f"{name}: {why}" for name, why in self.skipped.items()]


@dataclass
class _Plot:
    name: str  # file stem
    title: str
    draw: Callable[[Any], Any]  # receives optuna.visualization or optuna.visualization.matplotlib
    why_not: str | None  # set when the study cannot give this plot


def _import_plotting():
    """matplotlib (Agg) and plotly, or a ConfigError that says which extra to install."""
    try:
        import matplotlib
        import plotly  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the report needs matplotlib and plotly ({exc.name} is not installed)",
                          hint=INSTALL_HINT) from exc
    if "matplotlib.pyplot" not in sys.modules:
        # Headless: no display needed. A session that already chose a backend (a notebook) keeps it,
        # since every figure here is saved to a file and closed anyway.
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as plotly_vis
    import optuna.visualization.matplotlib as mpl_vis

    return matplotlib, plt, mpl_vis, plotly_vis


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    # Optuna's matplotlib plots are "experimental" and warn on every call, and with a single trial
    # matplotlib warns that it widened a zero-width axis (which is the right thing to do).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Attempting to set identical", category=UserWarning)
        yield


def _plots(study: optuna.Study, importances: dict[str, float] | None, importance_error: str | None,
           metric: str) -> list[_Plot]:
    trials = study.get_trials(deepcopy=False)
    complete = _finished(study)
    searched = sorted({name for t in complete for name in t.params})
    no_complete = "no completed trial yet" if not complete else None
    no_params = no_complete or ("the completed trials have no searched parameter" if not searched else None)
    curves = [t for t in trials if t.intermediate_values and t.state != TrialState.FAIL]

    multi = len(study.directions) > 1
    target = _first_objective(study)
    names = _metric_names(study)
    metric = names[0]  # the one-metric plots of a multi-objective study show its first metric
    pareto_why = None if multi else "the study optimizes one metric"
    if multi and len(names) > 3:
        pareto_why = f"Optuna draws Pareto fronts of 2 or 3 metrics; this study has {len(names)}"
    if multi and not complete:
        pareto_why = "no completed trial yet"
    if multi:
        curves = []  # Optuna keeps no intermediate values for multi-objective trials
    contour_why = None
    missing = [p for p in CONTOUR_PARAMS if p not in searched]
    if missing:
        contour_why = f"{' and '.join(missing)} {'was' if len(missing) == 1 else 'were'} not searched"
    else:
        for p in CONTOUR_PARAMS:
            values = {repr(t.params[p]) for t in complete if p in t.params}
            if len(values) < 2:
                contour_why = f"{p} took fewer than 2 values in the completed trials"
                break

    evaluator = _precomputed_class()(importances or {})
    of = f" ({metric})" if multi else ""
    plots = [
        _Plot("pareto_front", f"Pareto front ({', '.join(names)}; the best trade-offs in red)",
              lambda vis: vis.plot_pareto_front(study, target_names=names), pareto_why),
        _Plot("optimization_history", f"Optimization history{of}",
              lambda vis: vis.plot_optimization_history(study, target=target, target_name=metric), no_complete),
        _Plot("intermediate_values", f"Learning curves: {metric} at each evaluation (pruned trials dashed, "
              "ending in a cross; the winner in red)",
              lambda vis: _learning_curves(study, metric, vis),
              None if curves else ("multi-objective trials keep no intermediate values" if multi
                                   else "no trial reported an intermediate value")),
        _Plot("loss_vs_metric", f"eval_loss against {metric}, every trial's last evaluation (pruned trials "
              "hollow; the winner in red): does the loss track what the sweep picks by?",
              lambda vis: _loss_against_metric(study, metric, vis), _loss_against_why(study, metric)),
        _Plot("param_importances", f"Parameter importances{of}",
              lambda vis: vis.plot_param_importances(study, evaluator=evaluator, target=target, target_name=metric),
              importance_error),
        _Plot("parallel_coordinate", f"Parallel coordinates{of}",
              lambda vis: vis.plot_parallel_coordinate(study, target=target, target_name=metric), no_params),
        _Plot("slice", f"Slice plot (metric against each parameter){of}",
              lambda vis: vis.plot_slice(study, target=target, target_name=metric), no_params),
        _Plot("contour_lr_rank", f"Contour: learning_rate × lora_r{of}",
              lambda vis: vis.plot_contour(study, params=list(CONTOUR_PARAMS), target=target, target_name=metric),
              no_complete or contour_why),
    ]
    # The loss against the metric is drawn for single-metric sweeps that pick by another metric than the loss.
    loss_plot = not multi and metric != "eval_loss" and record.STUDY_SWEEP in study.user_attrs  # ftsweep's: losses recorded
    return [plot for plot in plots if (multi or plot.name != "pareto_front") and (loss_plot or plot.name != "loss_vs_metric")]


def _last_evaluations(study: optuna.Study, metric: str) -> list[tuple[FrozenTrial, dict[str, float]]]:
    """Each completed or pruned trial with the last evaluation that has `metric` (its final metrics when complete)."""
    found = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        final = trial.user_attrs.get(record.METRICS) or {}
        if trial.state != TrialState.COMPLETE or metric not in final:
            final = next((e for e in reversed(trial.user_attrs.get(record.EVAL_HISTORY) or []) if metric in e), {})
        if metric in final and "eval_loss" in final:
            found.append((trial, final))
    return found


def _loss_against_why(study: optuna.Study, metric: str) -> str | None:
    if len(_last_evaluations(study, metric)) < 2:
        return f"fewer than 2 trials recorded both eval_loss and {metric}"
    return None


def _winner(study: optuna.Study) -> int | None:
    best = top_trials(study, 1)
    return best[0].number if best and len(study.directions) == 1 else None


def _loss_against_metric(study: optuna.Study, metric: str, vis) -> Any:
    """A scatter of eval_loss (x) against the sweep's metric (y), one point per trial, with Spearman's rho."""
    from scipy.stats import spearmanr

    points = _last_evaluations(study, metric)
    winner = _winner(study)
    rho = spearmanr([m["eval_loss"] for _, m in points], [m[metric] for _, m in points]).statistic
    title = f"eval_loss against {metric} (Spearman {rho:+.2f} over {len(points)} trials)"
    groups = {
        "complete": [(t, m) for t, m in points if t.state == TrialState.COMPLETE and t.number != winner],
        "pruned": [(t, m) for t, m in points if t.state == TrialState.PRUNED],
        f"winner (trial {winner})": [(t, m) for t, m in points if t.number == winner],
    }
    styles = {"complete": ("#4c78a8", True), "pruned": ("#999999", False)}
    if vis.__name__.endswith("matplotlib"):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, members in groups.items():
            if not members:
                continue
            color, filled = styles.get(label, ("#d62728", True))
            ax.scatter([m["eval_loss"] for _, m in members], [m[metric] for _, m in members], label=label,
                       s=60 if label.startswith("winner") else 30, edgecolors=color,
                       facecolors=color if filled else "none")
            for trial, m in members:
                ax.annotate(str(trial.number), (m["eval_loss"], m[metric]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel("eval_loss (lower is better)")
        ax.set_ylabel(metric)
        ax.set_title(title)
        ax.legend()
        return ax
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, members in groups.items():
        if members:
            color, filled = styles.get(label, ("#d62728", True))
            fig.add_trace(go.Scatter(
                x=[m["eval_loss"] for _, m in members], y=[m[metric] for _, m in members], mode="markers", name=label,
                text=[f"trial {t.number}" for t, _ in members],
                marker={"color": color if filled else "rgba(0,0,0,0)", "line": {"color": color, "width": 1.5},
                        "size": 12 if label.startswith("winner") else 8}))
    fig.update_layout(title=title, xaxis_title="eval_loss (lower is better)", yaxis_title=metric)
    return fig


def _learning_curves(study: optuna.Study, metric: str, vis) -> Any:
    """The sweep's metric at each evaluation of every trial (what the pruner saw), pruned trials dashed and
    ending in a cross, the winner in red."""
    winner = _winner(study)
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values and t.state != TrialState.FAIL]
    title = f"{metric} at each evaluation"
    if vis.__name__.endswith("matplotlib"):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        said_pruned = False
        for trial in trials:
            steps = sorted(trial.intermediate_values)
            values = [trial.intermediate_values[s] for s in steps]
            pruned = trial.state == TrialState.PRUNED
            color = "#d62728" if trial.number == winner else ("#999999" if pruned else "#4c78a8")
            ax.plot(steps, values, linestyle="--" if pruned else "-", color=color, marker="o", markersize=3,
                    linewidth=2.2 if trial.number == winner else 1, alpha=1 if trial.number == winner else 0.7,
                    label=f"winner (trial {winner})" if trial.number == winner else None)
            if pruned:
                ax.plot(steps[-1:], values[-1:], marker="x", color=color, markersize=8, linestyle="none",
                        label=None if said_pruned else "pruned (stopped here)")
                said_pruned = True
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(title)
        if winner is not None or said_pruned:
            ax.legend()
        return ax
    import plotly.graph_objects as go

    fig = go.Figure()
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        pruned = trial.state == TrialState.PRUNED
        color = "#d62728" if trial.number == winner else ("#999999" if pruned else "#4c78a8")
        fig.add_trace(go.Scatter(
            x=steps, y=[trial.intermediate_values[s] for s in steps], mode="lines+markers",
            name=f"trial {trial.number}" + (" (pruned)" if pruned else " (winner)" if trial.number == winner else ""),
            line={"color": color, "dash": "dash" if pruned else "solid", "width": 3 if trial.number == winner else 1}))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=metric)
    return fig


def _save_png(plt, result: Any, path: Path) -> None:
    # Optuna returns one Axes or, for several subplots, an ndarray of them.
    axes = result.flat[0] if hasattr(result, "flat") else result
    fig = axes.figure
    try:
        legend = axes.get_legend()
        if legend is not None and len(legend.get_texts()) > 20:
            legend.remove()  # one entry per trial: past ~20 it is taller than the plot and says nothing
        fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def _summary(study: optuna.Study, metric: str) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    multi = len(study.directions) > 1
    best = pareto = None
    if _finished(study):
        try:
            best = None if multi else study.best_trial
        except ValueError:  # no completed trial satisfies the constraints
            best = None
        pareto = sorted(study.best_trials, key=lambda t: t.number) if multi else None
    return {"trials": len(trials), "counts": counts, "best": best, "metric": metric, "pareto": pareto,
            "metric_names": _metric_names(study),
            "direction": ", ".join(d.name.lower() for d in study.directions)}


def write_report(study: optuna.Study, out_dir: Path, *, evaluator: str = "fanova") -> ReportFiles:
    """Write PNG plots and one self-contained ``report.html`` (opens offline) for ``study``.

    PNGs (Optuna's matplotlib plots): optimization_history, intermediate_values, param_importances,
    parallel_coordinate, slice and contour_lr_rank (learning_rate × lora_r, when both were
    searched). A plot the study cannot give yet (too few trials, param not searched) is skipped,
    and the HTML says why. The HTML embeds every PNG and the interactive Plotly versions, with
    plotly.js inlined once: no network needed to open it.

    Example:
        >>> files = write_report(study, tmp / "report")
        >>> files.html.name, "optimization_history.png" in [p.name for p in files.images]
        ('report.html', True)
    """
    _make_evaluator(evaluator, 0)  # a bad name is the caller's mistake, not a note in the report
    matplotlib, plt, mpl_vis, plotly_vis = _import_plotting()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = ", ".join(_metric_names(study))

    importances: dict[str, float] | None = None
    importance_error: str | None = None
    try:
        importances = compute_importances(study, evaluator=evaluator)
    except ConfigError as exc:
        importance_error = exc.message

    files = ReportFiles(html=out_dir / "report.html")
    figures: list[tuple[_Plot, str | None, str | None]] = []  # plot, PNG data URI, Plotly div
    first_plotly = True
    for plot in _plots(study, importances, importance_error, metric):
        png_path = out_dir / f"{plot.name}.png"
        if plot.why_not:
            files.skipped[png_path.name] = plot.why_not
            png_path.unlink(missing_ok=True)  # an earlier report's picture would contradict this one
            figures.append((plot, None, None))
            continue
        png_uri = div = None
        open_figures = set(plt.get_fignums())
        try:
            # Optuna's plots call plt.style.use("ggplot"); rc_context keeps that from leaking out.
            with _quiet_optuna(), matplotlib.rc_context():
                _save_png(plt, plot.draw(mpl_vis), png_path)
            files.images.append(png_path)
            png_uri = "data:image/png;base64," + base64.b64encode(png_path.read_bytes()).decode("ascii")
            with _quiet_optuna():
                fig = plot.draw(plotly_vis)
            # plotly.js goes into the page once, with the first figure; the rest reuse it.
            div = fig.to_html(full_html=False, include_plotlyjs=first_plotly, div_id=f"plotly-{plot.name}",
                              default_height="520px", config={"displaylogo": False, "responsive": True})
            first_plotly = False
        except Exception as exc:  # one plot Optuna cannot draw must not cost the whole report
            for number in set(plt.get_fignums()) - open_figures:  # ours only: not a notebook's
                plt.close(number)
            png_path.unlink(missing_ok=True)
            if png_path in files.images:
                files.images.remove(png_path)
            plot.why_not = f"Optuna could not draw it ({type(exc).__name__}: {exc})"
            files.skipped[png_path.name] = plot.why_not
            png_uri = div = None
        figures.append((plot, png_uri, div))

    files.html.write_text(_render_html(study, _summary(study, metric), importances, importance_error,
                                       evaluator, figures), encoding="utf-8")
    return files


# ----------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{padding:.25rem .7rem;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}
.bar{background:#4c78a8;height:.8rem;display:inline-block;vertical-align:middle}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4rem .8rem}
.plotly-box{overflow-x:auto}figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;margin-top:.3rem}
"""


def _gap_section(study: optuna.Study, k: int = 10) -> str:
    """The train-validation gap (eval_loss minus the training loss since the previous evaluation) of the
    best trials at each evaluation: a gap that grows while training loss falls is overfitting."""
    rows = []
    for row in top_trials(study, k):
        history = [h for h in study.trials[row.number].user_attrs.get(record.EVAL_HISTORY, []) if "train_eval_gap" in h]
        if history:
            rows.append((row.number, history))
    if not rows:
        return ""
    steps = sorted({h["step"] for _, history in rows for h in history})
    html_rows = "".join(
        f"<tr><td>{number}</td>" + "".join(
            f'<td class="num">{_e(format_value(next((h["train_eval_gap"] for h in history if h["step"] == s), "")))}</td>'
            for s in steps) + "</tr>"
        for number, history in rows)
    return ("<h2>Overfitting: train–validation gap</h2>"
            "<p>eval_loss minus the mean training loss of the steps since the previous evaluation, for the best "
            "trials. A gap that grows while the training loss keeps falling means the adapter is memorising; "
            "dropout and label smoothing make the training side a little higher.</p>"
            "<table><tr><th>trial</th>" + "".join(f"<th>step {s}</th>" for s in steps) + "</tr>" + html_rows
            + "</table>")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _kv_table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _render_html(study: optuna.Study, summary: dict[str, Any], importances: dict[str, float] | None,
                 importance_error: str | None, evaluator: str,
                 figures: list[tuple[_Plot, str | None, str | None]]) -> str:
    name = _e(study.study_name)
    metric = _e(summary["metric"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ftsweep report: {name}</title><style>{_CSS}</style></head><body>",
        f"<h1>Study {name}</h1>",
        f'<p class="muted">ftsweep report, generated {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} '
        f"with Optuna {_e(optuna.__version__)}.</p>",
        "<h2>Summary</h2>",
    ]
    counts = summary["counts"]
    state_text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"
    rows = [("metric", f"{metric} ({_e(summary['direction'])})"),
            ("trials", f"{summary['trials']} ({_e(state_text)})")]
    for key in ("objective",):
        if study.user_attrs.get(key):
            rows.append((key, _e(study.user_attrs[key])))
    best: FrozenTrial | None = summary["best"]
    if study.user_attrs.get(record.STUDY_CONSTRAINTS):
        rows.append(("constraints", _e("; ".join(study.user_attrs[record.STUDY_CONSTRAINTS]))))
    pareto: list[FrozenTrial] | None = summary["pareto"]
    if pareto is not None:
        rows.append(("Pareto front", f"{len(pareto)} trial(s): {_e(', '.join(str(t.number) for t in pareto))}"))
    elif best is None:
        rows.append(("best", '<span class="muted">no completed (feasible) trial yet</span>'))
    else:
        rows.append(("best", f"{_e(format_value(best.value))} (trial {best.number})"))
    parts.append(_kv_table(rows))
    if pareto:
        names = summary["metric_names"]
        parts.append("<h3>Pareto front</h3><table><tr><th>trial</th>"
                     + "".join(f"<th>{_e(n)}</th>" for n in names) + "<th>params</th></tr>" + "".join(
            f'<tr><td>{t.number}</td>' + "".join(f'<td class="num">{_e(format_value(v))}</td>' for v in t.values)
            + f"<td>{_e(', '.join(f'{k}={format_value(v)}' for k, v in t.params.items()))}</td></tr>"
            for t in pareto) + "</table>"
            + '<p class="muted">No other completed trial is at least as good on every metric. '
              "Export them all: <code>ftsweep export STUDY --pareto --out DIR</code>.</p>")
    if best is not None:
        config = record.config_of(best)
        # Searched values in bold: fixed and derived ones follow from them.
        parts.append("<h3>Best trial's parameters</h3>" + _kv_table([
            (_e(k), f"<b>{_e(format_value(v))}</b>" if k in best.params else _e(format_value(v)))
            for k, v in config.items()
        ]) + '<p class="muted">Searched parameters in bold; the others are fixed or derived.</p>')

    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    if failed:
        parts.append("<h3>Failed trials</h3>" + _kv_table([
            (f"trial {t.number}", _e(t.user_attrs.get(record.FAIL_REASON, "no reason recorded"))) for t in failed
        ]))

    parts.append(_gap_section(study))

    parts.append(f"<h2>Parameter importance ({_e(evaluator)})</h2>")
    if importances is None:
        parts.append(f'<p class="note">Not computed: {_e(importance_error)}.</p>')
    else:
        top = max(importances.values()) or 1.0
        parts.append("<table><tr><th>param</th><th>importance</th><th></th></tr>" + "".join(
            f'<tr><td>{_e(k)}</td><td class="num">{v:.3f}</td>'
            f'<td><span class="bar" style="width:{v / top * 240:.0f}px"></span></td></tr>'
            for k, v in importances.items()
        ) + "</table>")

    parts.append("<h2>Plots</h2>")
    for plot, png_uri, _ in figures:
        if png_uri is None:
            parts.append(f'<p class="note"><b>{_e(plot.title)}</b> ({_e(plot.name)}.png): '
                         f"skipped: {_e(plot.why_not)}.</p>")
        else:
            parts.append(f'<figure><img alt="{_e(plot.title)}" src="{png_uri}">'
                         f"<figcaption>{_e(plot.title)} ({_e(plot.name)}.png)</figcaption></figure>")

    interactive = [(plot, div) for plot, _, div in figures if div is not None]
    if interactive:
        parts.append("<h2>Interactive plots</h2>")
        for plot, div in interactive:
            parts.append(f'<h3>{_e(plot.title)}</h3><div class="plotly-box">{div}</div>')
    parts.append("</body></html>")
    return "\n".join(parts)
