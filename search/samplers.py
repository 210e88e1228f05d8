"""Samplers: the sweep file's `sampler.name` -> an Optuna sampler, with `sampler.args` as keyword arguments.

| name   | Optuna class  | good for                                                                 |
|--------|---------------|--------------------------------------------------------------------------|
| tpe    | TPESampler    | the default: mixed/conditional spaces, few dozen trials                   |
| random | RandomSampler | baselines, very parallel sweeps                                           |
| grid   | GridSampler   | small exhaustive spaces (every param categorical, int, or float with step) |
| cmaes  | CmaEsSampler  | continuous spaces, many trials                                            |
| gp     | GPSampler     | expensive trials, small continuous spaces                                 |
| qmc    | QMCSampler    | evenly spread exploration (Sobol/Halton)                                  |
| nsgaii | NSGAIISampler | multi-objective sweeps with many trials (genetic; population 50 by default) |
| nsgaiii| NSGAIIISampler| multi-objective sweeps with 3+ objectives (reference points)              |

All but cmaes also drive multi-objective sweeps (`metric:` a list); TPE is the default for those
too. Constraints (`constraints:` in the sweep file) reach every sampler that supports them through
Optuna's `Trial.set_constraint`.

Adding one is a line in SAMPLERS. The sweep's `seed` is passed to every sampler that takes one.
"""

from __future__ import annotations

from typing import Any

import optuna

from spaces import ConfigError, SearchSpace

from ._components import construct

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
    "nsgaiii": optuna.samplers.NSGAIIISampler,
}
SINGLE_OBJECTIVE_ONLY = {"cmaes"}
# Optional packages some samplers import only when they first sample: checked at load instead.
_NEEDS = {"cmaes": ("cmaes", "pip install cmaes"), "gp": ("scipy", "pip install scipy"),
          "qmc": ("scipy", "pip install scipy")}


def build_sampler(spec, space: SearchSpace, *, seed: int | None, source: str | None = None):
    """An Optuna sampler for a `ComponentSpec` (name + args).

    Example:
        >>> from search.spec import ComponentSpec
        >>> from spaces import get_preset
        >>> type(build_sampler(ComponentSpec(name="random"), get_preset("lora"), seed=0)).__name__
        'RandomSampler'
    """
    if spec.name not in SAMPLERS:
        raise ConfigError("unknown sampler", source=source, key="sampler.name", value=spec.name,
                          allowed=sorted(SAMPLERS))
    if spec.name in _NEEDS:
        import importlib.util

        module, install = _NEEDS[spec.name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"the {spec.name} sampler needs the '{module}' package", source=source,
                              key="sampler.name", value=spec.name, hint=f"Fix: {install}")
    extra: dict[str, Any] = {"seed": seed}
    if spec.name == "grid":
        extra["search_space"] = space.grid()
    return construct("sampler", spec.name, SAMPLERS[spec.name], dict(spec.args), source=source, extra=extra)


def check_sampler(spec, space: SearchSpace, *, source: str | None = None, n_objectives: int = 1) -> None:
    """Fail at load time, not mid-sweep, on a bad sampler name or argument, or a single-objective
    sampler for a multi-objective sweep."""
    if n_objectives > 1 and spec.name in SINGLE_OBJECTIVE_ONLY:
        raise ConfigError(f"the {spec.name} sampler optimizes one metric; this sweep has {n_objectives}",
                          source=source, key="sampler.name", value=spec.name,
                          allowed=sorted(set(SAMPLERS) - SINGLE_OBJECTIVE_ONLY),
                          hint="Fix: use tpe (the default), nsgaii or nsgaiii, or optimize one metric.")
    build_sampler(spec, space, seed=0, source=source)
