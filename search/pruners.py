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
| threshold          | ThresholdPruner         | its value leaves [lower, upper]                                   |

Steps are optimizer steps, so resources (hyperband/successive halving) default to the budget:
`min_resource = budget.eval_every`, `max_resource = budget.max_steps` when not given.
"""

from __future__ import annotations

from typing import Any

import optuna

from spaces import ConfigError

from ._components import construct

PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "patient": optuna.pruners.PatientPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "threshold": optuna.pruners.ThresholdPruner,
}
ALIASES = {"sha": "successive_halving", "asha": "successive_halving", "nop": "none"}


def build_pruner(spec, *, budget=None, source: str | None = None, key: str = "pruner"):
    """An Optuna pruner for a `ComponentSpec` (name + args).

    Example:
        >>> from search.spec import ComponentSpec
        >>> type(build_pruner(ComponentSpec(name="sha"))).__name__
        'SuccessiveHalvingPruner'
    """
    name = ALIASES.get(spec.name, spec.name)
    if name not in PRUNERS:
        raise ConfigError("unknown pruner", source=source, key=f"{key}.name", value=spec.name,
                          allowed=sorted([*PRUNERS, *ALIASES]))
    args = dict(spec.args)
    extra: dict[str, Any] = {}
    if name == "patient":
        from .spec import ComponentSpec

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
    if budget is not None and name == "hyperband":
        extra.update(min_resource=budget.eval_every, max_resource=budget.max_steps)
    if budget is not None and name == "successive_halving":
        extra.update(min_resource=budget.eval_every)
    return construct(key, name, PRUNERS[name], args, source=source, extra=extra)


def check_pruner(spec, *, source: str | None = None) -> None:
    build_pruner(spec, source=source)
