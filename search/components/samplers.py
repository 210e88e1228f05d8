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

Adding one is a line below. The sweep's `seed` is passed to every sampler that takes one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from spaces import ConfigError, Registry, SearchSpace

from ._build import construct

SAMPLERS: Registry = Registry("sampler", key="sampler.name")
# Capabilities: multi_objective (drives `metric:` lists); needs (an optional package the sampler imports
# only when it first samples, checked when the sweep loads instead).
SAMPLERS.register("tpe", "optuna.samplers:TPESampler", multi_objective=True)
SAMPLERS.register("random", "optuna.samplers:RandomSampler", multi_objective=True)
SAMPLERS.register("grid", "optuna.samplers:GridSampler", multi_objective=True, grid=True)
SAMPLERS.register("cmaes", "optuna.samplers:CmaEsSampler", needs=("cmaes", "pip install cmaes"))
SAMPLERS.register("gp", "optuna.samplers:GPSampler", multi_objective=True, needs=("scipy", "pip install scipy"))
SAMPLERS.register("qmc", "optuna.samplers:QMCSampler", multi_objective=True, needs=("scipy", "pip install scipy"))
SAMPLERS.register("nsgaii", "optuna.samplers:NSGAIISampler", multi_objective=True)
SAMPLERS.register("nsgaiii", "optuna.samplers:NSGAIIISampler", multi_objective=True)


def build_sampler(spec, space: SearchSpace, *, seed: int | None, source: str | None = None):
    """An Optuna sampler for a `ComponentSpec` (name + args).

    Example:
        >>> from search.settings import ComponentSpec
        >>> from spaces import get_preset
        >>> type(build_sampler(ComponentSpec(name="random"), get_preset("lora"), seed=0)).__name__
        'RandomSampler'
    """
    entry = SAMPLERS.entry(spec.name, source=source)
    needs = entry.capabilities.get("needs")
    if needs is not None:
        module, install = needs
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"the {spec.name} sampler needs the '{module}' package", source=source,
                              key="sampler.name", value=spec.name, hint=f"Fix: {install}")
    extra: dict[str, Any] = {"seed": seed}
    if entry.capabilities.get("grid"):
        extra["search_space"] = space.grid()
    return construct("sampler", spec.name, entry.load(), dict(spec.args), source=source, extra=extra)


def check_sampler(spec, space: SearchSpace, *, source: str | None = None, n_objectives: int = 1) -> None:
    """Fail at load time, not mid-sweep, on a bad sampler name or argument, or a single-objective
    sampler for a multi-objective sweep."""
    if n_objectives > 1 and spec.name in SAMPLERS and not SAMPLERS.supports(spec.name, "multi_objective"):
        raise ConfigError(f"the {spec.name} sampler optimizes one metric; this sweep has {n_objectives}",
                          source=source, key="sampler.name", value=spec.name,
                          allowed=SAMPLERS.having("multi_objective"),
                          hint="Fix: use tpe (the default), nsgaii or nsgaiii, or optimize one metric.")
    build_sampler(spec, space, seed=0, source=source)
