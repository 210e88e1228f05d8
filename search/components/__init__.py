"""What a sweep file can name, each an entry of one registry (`spaces.Registry`) with its capabilities:
`BACKENDS` (`backend:`), `SAMPLERS` (`sampler:`) and `PRUNERS` (`pruner:`).

Entries are `module:Class` strings imported on first use, so naming the Ray backend costs nothing
until a Ray sweep runs. Callers ask capabilities (`BACKENDS.supports("ray", "multi_objective")`)
rather than comparing names. Adding a backend is its module in `search/backends/` plus one line here.

Example:
    >>> BACKENDS.names(), BACKENDS.supports("optuna", "workers"), BACKENDS.supports("ray", "workers")
    (['optuna', 'ray'], True, False)
"""

from __future__ import annotations

from spaces import Registry

from .pruners import PRUNERS, build_pruner, check_pruner, pauses, prunes
from .samplers import SAMPLERS, build_sampler, check_sampler

BACKENDS: Registry = Registry("backend", key="backend")
# Capabilities: multi_objective (several metrics: a Pareto front), workers (`--workers N`/`--gpus` worker
# processes joining one study), optuna_pruners (prunes with the Optuna pruner itself; other backends
# map the pruner to their own schedulers when they run), packs (`pack.slots` > 1: packed trials), distributed
# (`resources.devices_per_trial` > 1: a trial as a torch.distributed job).
BACKENDS.register("optuna", "search.backends._optuna:OptunaBackend", multi_objective=True, workers=True,
                  optuna_pruners=True, packs=True, distributed=True)
BACKENDS.register("ray", "search.backends._ray:RayBackend", distributed=True)

__all__ = ["BACKENDS", "PRUNERS", "SAMPLERS", "build_pruner", "build_sampler", "check_pruner", "check_sampler", "pauses",
           "prunes"]
