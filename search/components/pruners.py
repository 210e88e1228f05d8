"""Pruners: the sweep file's `pruner.name` -> an Optuna pruner, with `pruner.args` as keyword arguments.

| name               | Optuna class            | stops a trial when...                                             |
|--------------------|-------------------------|-------------------------------------------------------------------|
| none               | NopPruner               | never                                                             |
| median             | MedianPruner            | it is worse than the median of earlier trials at the same step     |
| percentile         | PercentilePruner        | it is outside the top `percentile` % at the same step (needs `percentile`) |
| successive_halving | SuccessiveHalvingPruner | it is not in the top 1/reduction_factor of its rung (alias `sha`)  |
| hyperband          | HyperbandPruner         | successive halving over several brackets                          |
| patient            | PatientPruner           | the wrapped pruner says so *and* no improvement for `patience` evals (`args.wrapped: {name, args}`) |
| wilcoxon           | WilcoxonPruner          | a Wilcoxon signed-rank test says it is worse than the best trial   |
| paired             | PairedPruner (ours)     | its per-example scores at this step are significantly worse than the median (or best) trial's (paired_pruner.py) |
| threshold          | ThresholdPruner         | its value leaves [lower, upper]                                   |
| risk               | RiskPruner (ours)       | it lags completed top-k curves more than they ever did, calibrated so that an eventual top-k trial is pruned with chance <= max_risk (risk_pruner.py) |
| asha_promote       | AshaScheduler (ours)    | never: pauses it at each rung, resumes the top 1/reduction_factor (schedulers.py) |
| hyperband_promote  | HyperbandScheduler (ours)| never: asha_promote in Hyperband's brackets                      |
| curve_promote      | CurveScheduler (ours)   | never: asha_promote ranked by predicted final values (the study's curves) |

`asha` is Optuna's successive halving (it stops trials; on Ray, Ray's ASHA); the `*_promote` schedulers pause
trials instead and resume them exactly from their checkpoints (search/store/pausing.py): Optuna backend only.

Steps are optimizer steps, so resources (hyperband/successive halving) default to the budget:
`min_resource = budget.eval_every`, `max_resource = budget.max_steps` when not given.
"""

from __future__ import annotations

from typing import Any

from spaces import ConfigError, Registry

from ..settings import ComponentSpec
from ._build import construct

PRUNERS: Registry = Registry("pruner", key="pruner.name")
# Capabilities: optuna (an Optuna pruner the optuna backend builds), ray (the Ray Tune scheduler the
# ray backend maps it to: search/backends/ray_schedulers.py), budget_resources (min/max resource default to the
# trial budget's eval_every/max_steps), wraps (takes another pruner as `args.wrapped`), per_example (reads the
# trials' per-example scores: the backend passes where they are and the sweep's metric).
PRUNERS.register("none", "optuna.pruners:NopPruner", aliases=("nop",), optuna=True, ray="none")
PRUNERS.register("median", "optuna.pruners:MedianPruner", optuna=True, ray="median")
PRUNERS.register("percentile", "optuna.pruners:PercentilePruner", optuna=True)
PRUNERS.register("successive_halving", "optuna.pruners:SuccessiveHalvingPruner", aliases=("sha", "asha"),
                 optuna=True, ray="asha", budget_resources=("min",))
PRUNERS.register("hyperband", "optuna.pruners:HyperbandPruner", optuna=True, ray="hyperband",
                 budget_resources=("min", "max"))
PRUNERS.register("patient", "optuna.pruners:PatientPruner", optuna=True, wraps=True)
PRUNERS.register("wilcoxon", "optuna.pruners:WilcoxonPruner", optuna=True)
PRUNERS.register("threshold", "optuna.pruners:ThresholdPruner", optuna=True)
PRUNERS.register("paired", "search.components.paired_pruner:PairedPruner", optuna=True, per_example=True)
PRUNERS.register("risk", "search.components.risk_pruner:RiskPruner", optuna=True, budget_steps=True)
PRUNERS.register("pbt", "ray.tune.schedulers:PopulationBasedTraining", ray="pbt")  # Ray only: no Optuna pruner
# pauses: pauses and resumes trials through the study (search/store/pausing.py), so the Optuna backend only;
# budget_steps: min_steps / max_steps / eval_every default to the trial budget's.
PRUNERS.register("asha_promote", "search.components.schedulers:AshaScheduler", optuna=True, pauses=True,
                 budget_steps=True)
PRUNERS.register("hyperband_promote", "search.components.schedulers:HyperbandScheduler", optuna=True, pauses=True,
                 budget_steps=True)
PRUNERS.register("curve_promote", "search.components.schedulers:CurveScheduler", optuna=True, pauses=True,
                 budget_steps=True)


def pauses(name: str) -> bool:
    """Whether the pruner named `name` pauses and resumes trials (a `*_promote` scheduler)."""
    return name in PRUNERS and bool(PRUNERS.capabilities(name).get("pauses"))


def prunes(name: str) -> bool:
    """Whether the pruner named `name` (an alias works too) stops trials at all ('none' does not)."""
    return PRUNERS.canonical(name) != "none"


def build_pruner(spec, *, budget=None, source: str | None = None, key: str = "pruner", scores_dir=None,
                 metric: str | None = None):
    """An Optuna pruner for a `ComponentSpec` (name + args).

    Example:
        >>> from search.settings import ComponentSpec
        >>> type(build_pruner(ComponentSpec(name="sha"))).__name__
        'SuccessiveHalvingPruner'
    """
    entry = PRUNERS.entry(spec.name, source=source, key=f"{key}.name")
    name = entry.name
    if not entry.capabilities.get("optuna"):
        raise ConfigError(f"the {name} pruner is a Ray Tune scheduler with no Optuna equivalent: it runs on "
                          "the ray backend only", source=source,
                          key=f"{key}.name", value=spec.name, allowed=PRUNERS.having("optuna"),
                          hint="Fix: set backend: ray, or pick one of these pruners.")
    args = dict(spec.args)
    extra: dict[str, Any] = {}
    if entry.capabilities.get("wraps"):
        wrapped = args.pop("wrapped", None)
        if isinstance(wrapped, str):
            wrapped = {"name": wrapped}
        extra["wrapped_pruner"] = (
            build_pruner(ComponentSpec(**wrapped), budget=budget, source=source, key=f"{key}.args.wrapped")
            if wrapped else None
        )
        if "patience" not in args:
            raise ConfigError("the patient pruner needs `patience` (evaluations without improvement)",
                              source=source, key=f"{key}.args.patience")
    resources = entry.capabilities.get("budget_resources", ())
    if budget is not None and "min" in resources:
        extra["min_resource"] = budget.eval_every
    if budget is not None and "max" in resources:
        extra["max_resource"] = budget.max_steps
    if budget is not None and entry.capabilities.get("budget_steps"):
        extra.update(min_steps=budget.eval_every, max_steps=budget.max_steps, eval_every=budget.eval_every)
    if entry.capabilities.get("per_example"):
        extra.update(scores_dir=scores_dir, metric=metric)
    return construct(key, name, entry.load(), args, source=source, extra=extra)


def check_pruner(spec, *, source: str | None = None) -> None:
    build_pruner(spec, source=source)
