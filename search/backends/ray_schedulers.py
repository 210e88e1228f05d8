"""The sweep's pruner as a Ray Tune scheduler: which Ray class, and its arguments translated, in steps.

The same sweep file runs on both backends, so `pruner.args` use Optuna's argument names and this module
translates them. Ray's own names, which the Ray backend has always taken, still work (`RAY_NAMES`), but
one file uses one or the other: mixing them is refused, as is an argument with no Ray meaning. Every
time is in optimizer steps: each scheduler's `time_attr` is "step", which the trainable reports at
every evaluation (every `budget.eval_every` steps). Defaults are Optuna's, except the resources, which
default to the budget on both backends (`budget_resources` in search/components/pruners.py).

| pruner             | Ray scheduler           | Optuna argument (default)     | -> Ray argument                    |
|--------------------|-------------------------|-------------------------------|------------------------------------|
| none               | none                    |                               |                                    |
| successive_halving | AsyncHyperBandScheduler | min_resource (eval_every)     | grace_period =                     |
| (sha, asha)        | with 1 bracket,         | min_early_stopping_rate s (0) |   min_resource * rf ** s; "auto":  |
|                    | max_t = max_steps       |                               |   Optuna's max(max_steps//100, 1)  |
|                    |                         | reduction_factor rf (4)       | reduction_factor                   |
|                    |                         | bootstrap_count (0)           | refused unless 0                   |
| hyperband          | AsyncHyperBandScheduler | min_resource (eval_every)     | grace_period                       |
|                    | (asynchronous, like     | max_resource (max_steps;      | brackets = floor(log_rf(           |
|                    | Optuna's),              |   "auto" = max_steps)         |   max_resource / min_resource)) + 1|
|                    | max_t = max_steps       | reduction_factor rf (3)       | reduction_factor                   |
|                    |                         | bootstrap_count (0)           | refused unless 0                   |
| median             | MedianStoppingRule,     | n_warmup_steps (0)            | grace_period                       |
|                    | hard_stop=True,         | n_startup_trials (5)          | min_samples_required =             |
|                    | min_time_slice=inf      | n_min_trials (1)              |   max(the two, 1)                  |
|                    |                         | interval_steps (1)            | refused unless <= eval_every       |
| pbt (Ray only)     | PopulationBasedTraining | Ray's names: mutations, perturbation_interval (eval_every), |
|                    |                         | quantile_fraction, resample_probability, synch              |

`TRANSLATIONS` holds the same as data (with why, argument by argument).

Why no trial is ever paused, except under PBT (which must pause to clone and explore). No Optuna
pruner pauses; a paused Ray trial is stopped and later restarted from its last checkpoint.
- Hyperband is Ray's *asynchronous* HyperBand (ASHA with brackets). Its decisions are CONTINUE or STOP
  (ray/tune/schedulers/async_hyperband.py, `on_trial_result` and `_Bracket.on_result`). Ray's
  synchronous `HyperBandScheduler` pauses every trial at a rung until its bracket has filled.
- The median rule pauses in two places (ray/tune/schedulers/median_stopping_rule.py): a trial below
  the median when `hard_stop` is False (we pass True), and a trial with fewer than
  `min_samples_required` others to compare with, to "yield time" to pending trials, whenever
  `time - last_pause > min_time_slice`. `last_pause` starts at -inf, so any *finite* min_time_slice
  still pauses at a trial's first such report; only min_time_slice = inf never does.

Where the rules differ although the arguments agree:
- Ray's median compares a trial's best value with the median of the other trials' running means up to
  this step, over every trial that has reached it (running ones too); Optuna's with the median of the
  *completed* trials' values at this step. So Ray may start judging a little sooner.
- ASHA puts a trial in a random bracket (weighted by rung counts); Optuna's Hyperband by a hash of the
  trial number and a budget per bracket. Rungs are the same: bracket s's are at
  min_resource * reduction_factor ** (s + k), k = 0, 1, ...

ray is optional: this module imports without it, and imports Ray only to build a scheduler.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import optuna

from spaces import ConfigError

from ..components import PRUNERS

PBT_MUTABLE = ("learning_rate", "weight_decay", "lora_dropout", "max_grad_norm", "warmup_ratio",
               "lr_scheduler_type", "label_smoothing_factor")  # params that keep the adapter's shapes
TIME_ATTR = "step"  # what the trainable reports at every evaluation; all scheduler times are in steps
EVAL_EVERY, MAX_STEPS = "budget.eval_every", "budget.max_steps"  # defaults taken from the trial budget


class Arg(NamedTuple):
    """How one Optuna pruner argument reaches Ray."""

    ray: str | None  # the Ray scheduler argument it decides; None: no Ray equivalent
    default: Any  # Optuna's default, or the budget number both backends default it to
    how: str


# Per Ray scheduler kind (a pruner registry entry's `ray` capability): Optuna argument -> how it maps.
TRANSLATIONS: dict[str, dict[str, Arg]] = {
    "none": {},
    "asha": {
        "min_resource": Arg("grace_period", EVAL_EVERY,
                            "steps of the first rung; 'auto': Optuna's own estimate, max(max_steps // 100, 1)"),
        "reduction_factor": Arg("reduction_factor", 4, "as is"),
        "min_early_stopping_rate": Arg("grace_period", 0, "s: grace_period = min_resource * reduction_factor ** s"),
        "bootstrap_count": Arg(None, 0, "no Ray equivalent: only 0 is taken"),
    },
    "hyperband": {
        "min_resource": Arg("grace_period", EVAL_EVERY, "steps of bracket 0's first rung"),
        "max_resource": Arg("brackets", MAX_STEPS,
                            "'auto' = max_steps; brackets = floor(log_reduction_factor(max_resource / min_resource)) "
                            "+ 1, as Optuna counts them. max_t stays max_steps: Optuna's rungs go on to the end of "
                            "a trial, and Ray's max_t would stop trials before their budget (recorded pruned)"),
        "reduction_factor": Arg("reduction_factor", 3, "as is (and it sets brackets)"),
        "bootstrap_count": Arg(None, 0, "no Ray equivalent: only 0 is taken"),
    },
    "median": {
        "n_warmup_steps": Arg("grace_period", 0,
                              "steps (0 and eval_every judge alike: the first report is at step eval_every)"),
        "n_startup_trials": Arg("min_samples_required", 5,
                                "min_samples_required = max(n_startup_trials, n_min_trials, 1): Ray counts the "
                                "other trials that reached this step; with 0 it would prune against nothing"),
        "n_min_trials": Arg("min_samples_required", 1, "see n_startup_trials"),
        "interval_steps": Arg(None, 1, "Ray judges at every report; so does Optuna for any interval_steps <= "
                                       "eval_every. Larger values are refused"),
    },
    "pbt": {},  # Ray only: it takes Ray's names
}
# Ray's own names each kind takes instead (what the Ray backend always accepted).
RAY_NAMES: dict[str, tuple[str, ...]] = {
    "none": (),
    "asha": ("grace_period", "max_t", "reduction_factor", "brackets"),
    "hyperband": ("grace_period", "max_t", "reduction_factor", "brackets"),
    "median": ("grace_period", "min_samples_required"),
    "pbt": ("mutations", "perturbation_interval", "quantile_fraction", "resample_probability", "synch"),
}
SCHEDULERS: dict[str, str | None] = {  # the class in ray.tune.schedulers
    "none": None,
    "asha": "AsyncHyperBandScheduler",
    "hyperband": "AsyncHyperBandScheduler",
    "median": "MedianStoppingRule",
    "pbt": "PopulationBasedTraining",
}


def ray_scheduler_args(spec, budget, space=None, *, source: str | None = None) -> tuple[str, dict] | None:
    """The Ray scheduler class name (in `ray.tune.schedulers`) and its arguments for the sweep's pruner,
    without metric, mode and time_attr; None for `pruner: none`. Needs Ray only for `pbt`.

    Args:
        spec: the sweep's `SweepSpec` (its `pruner`).
        budget: the trial budget (`objectives.TrainBudget`): the resources' defaults, in steps.
        space: the sweep's space (PBT's default mutations).
        source: the sweep file, for errors.

    Example:
        >>> from search.settings import SweepSpec
        >>> spec = SweepSpec(name="s", objective="causal_lm", model="bundled:tiny-support-lm",
        ...                  dataset="bundled:support-qa", space="lora-quick", pruner={"name": "hyperband"},
        ...                  budget={"max_steps": 90, "eval_every": 10})
        >>> ray_scheduler_args(spec, spec.budget)
        ('AsyncHyperBandScheduler', {'grace_period': 10, 'max_t': 90, 'reduction_factor': 3, 'brackets': 3})
        >>> spec.pruner.name, spec.pruner.args = "median", {"n_warmup_steps": 20}
        >>> ray_scheduler_args(spec, spec.budget)  # doctest: +NORMALIZE_WHITESPACE
        ('MedianStoppingRule',
         {'grace_period': 20, 'min_samples_required': 5, 'hard_stop': True, 'min_time_slice': inf})
    """
    name = spec.pruner.name
    kind = PRUNERS.capabilities(name).get("ray") if name in PRUNERS else None
    if kind not in TRANSLATIONS:
        raise ConfigError(f"the {name} pruner has no Ray equivalent", source=source, key="pruner.name", value=name,
                          allowed=PRUNERS.having("ray"))
    args = dict(spec.pruner.args)
    ray_style = _spelling(name, kind, args, source)
    if kind == "none":
        return None
    if kind == "pbt":
        return SCHEDULERS[kind], _pbt(args, budget, space)
    if not ray_style:  # Optuna's names, with Optuna's (or the budget's) defaults
        defaults = {arg: _default(spec_arg.default, budget) for arg, spec_arg in TRANSLATIONS[kind].items()}
        args = {**defaults, **args}
    build = {"asha": _asha, "hyperband": _hyperband, "median": _median}[kind]
    return SCHEDULERS[kind], build(args, budget, ray_style, source)


def ray_scheduler(spec, budget, metric: str, mode: str, space=None, *, source: str | None = None):
    """The Ray Tune scheduler for the sweep's pruner (`ray_scheduler_args`), times in steps; None for `none`.

    Example:
        >>> from search.settings import SweepSpec
        >>> spec = SweepSpec(name="s", objective="causal_lm", model="bundled:tiny-support-lm",
        ...                  dataset="bundled:support-qa", space="lora-quick", pruner={"name": "sha"})
        >>> scheduler = ray_scheduler(spec, spec.budget, "eval_loss", "min")
        >>> rungs = [milestone for milestone, _ in scheduler._brackets[0]._rungs]
        >>> type(scheduler).__name__, scheduler._time_attr, scheduler._max_t, rungs
        ('AsyncHyperBandScheduler', 'step', 60, [40, 10])
    """
    translated = ray_scheduler_args(spec, budget, space, source=source)
    if translated is None:
        return None
    from ray.tune import schedulers

    class_name, kwargs = translated
    return getattr(schedulers, class_name)(time_attr=TIME_ATTR, metric=metric, mode=mode, **kwargs)


def _spelling(name: str, kind: str, args: dict, source: str | None) -> bool:
    """Whether `args` use Ray's names (else Optuna's); refuses unknown names and a mix of both."""
    optuna_names, ray_names = set(TRANSLATIONS[kind]), set(RAY_NAMES[kind])
    allowed = sorted(optuna_names | ray_names)
    unknown = sorted(set(args) - optuna_names - ray_names)
    if unknown:
        raise ConfigError(f"argument(s) {', '.join(unknown)} not supported by the {name} pruner on Ray",
                          source=source, key="pruner.args", value=args, allowed=allowed)
    optuna_only = sorted(set(args) & (optuna_names - ray_names))
    ray_only = sorted(set(args) & (ray_names - optuna_names))
    if optuna_only and ray_only:
        raise ConfigError(f"mixes Optuna's argument names ({', '.join(optuna_only)}) with Ray's "
                          f"({', '.join(ray_only)})", source=source, key="pruner.args", value=args, allowed=allowed,
                          hint="Fix: use Optuna's names (the same file then runs on both backends) or only Ray's.")
    return bool(ray_only)


def _default(default: Any, budget) -> Any:
    if default == EVAL_EVERY:
        return budget.eval_every
    return budget.max_steps if default == MAX_STEPS else default


def _whole(args: dict, name: str, low: int, source: str | None) -> int:
    value = args[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"must be a whole number >= {low}", source=source, key=f"pruner.args.{name}", value=value)
    return value


def _factor(args: dict, source: str | None) -> float:
    value = args["reduction_factor"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 1:
        raise ConfigError("must be a number > 1", source=source, key="pruner.args.reduction_factor", value=value)
    return value


def _off(args: dict, name: str, source: str | None) -> None:
    if args.get(name, 0) != 0:
        raise ConfigError(f"{name} has no Ray equivalent: Ray's schedulers take no such setting", source=source,
                          key=f"pruner.args.{name}", value=args[name], allowed=[0],
                          hint=f"Fix: leave {name} out on the ray backend.")


def _rungs(args: dict, budget, grace: int, max_t: int, source: str | None) -> None:
    key = "pruner.args.grace_period" if "grace_period" in args else "pruner.args.min_resource"
    if grace > max_t:
        raise ConfigError(f"the first rung ({grace} steps) is beyond the trials' {max_t} steps: nothing would be "
                          "pruned", source=source, key=key, value=grace, allowed=f"a number of steps <= {max_t}")
    if max_t < budget.max_steps:  # Ray stops every trial at max_t: short of its budget, each would count as pruned
        raise ConfigError(f"max_t ({max_t}) is below budget.max_steps ({budget.max_steps}): Ray would stop every "
                          "trial there, short of its budget", source=source, key="pruner.args.max_t", value=max_t,
                          allowed=f">= {budget.max_steps}", hint="Fix: leave max_t out (it defaults to max_steps).")


def _brackets(max_resource: int, min_resource: int, reduction_factor: float) -> int:
    # optuna/pruners/_hyperband.py, the same float expression, so the count is Optuna's to the last digit
    # (math.log(243, 3) is 4.999...: 5 brackets, not 6).
    return math.floor(math.log(max_resource / min_resource, reduction_factor)) + 1


def _asha(args: dict, budget, ray_style: bool, source: str | None) -> dict:
    """Successive halving: one ASHA bracket whose first rung is Optuna's first promotion step."""
    if ray_style:
        args = {"grace_period": budget.eval_every, "max_t": budget.max_steps, "brackets": 1,
                "reduction_factor": TRANSLATIONS["asha"]["reduction_factor"].default, **args}
        grace, max_t = _whole(args, "grace_period", 1, source), _whole(args, "max_t", 1, source)
        brackets = _whole(args, "brackets", 1, source)
    else:
        _off(args, "bootstrap_count", source)
        if args["min_resource"] == "auto":  # what Optuna estimates from the first completed trial's last step
            args["min_resource"] = max(budget.max_steps // 100, 1)
        rate = _whole(args, "min_early_stopping_rate", 0, source)
        grace = _whole(args, "min_resource", 1, source) * _factor(args, source) ** rate
        max_t, brackets = budget.max_steps, 1
    factor = _factor(args, source)
    _rungs(args, budget, grace, max_t, source)
    return {"grace_period": grace, "max_t": max_t, "reduction_factor": factor, "brackets": brackets}


def _hyperband(args: dict, budget, ray_style: bool, source: str | None) -> dict:
    """Optuna's Hyperband is successive halving per bracket, asynchronous: ASHA with its bracket count."""
    if ray_style:
        args = {"grace_period": budget.eval_every, "max_t": budget.max_steps,
                "reduction_factor": TRANSLATIONS["hyperband"]["reduction_factor"].default, **args}
        grace, max_t = _whole(args, "grace_period", 1, source), _whole(args, "max_t", 1, source)
        factor = _factor(args, source)
        brackets = _whole(args, "brackets", 1, source) if "brackets" in args else _brackets(max_t, grace, factor)
    else:
        _off(args, "bootstrap_count", source)
        if args["max_resource"] == "auto":  # Optuna: the first completed trial's last step (+1)
            args["max_resource"] = budget.max_steps
        grace, max_t, factor = _whole(args, "min_resource", 1, source), budget.max_steps, _factor(args, source)
        brackets = _brackets(_whole(args, "max_resource", 1, source), grace, factor)
    _rungs(args, budget, grace, max_t, source)
    return {"grace_period": grace, "max_t": max_t, "reduction_factor": factor, "brackets": brackets}


def _median(args: dict, budget, ray_style: bool, source: str | None) -> dict:
    """The median rule, stopping (never pausing) a trial worse than the median at its step."""
    if ray_style:
        defaults = TRANSLATIONS["median"]
        args = {"grace_period": defaults["n_warmup_steps"].default,
                "min_samples_required": max(defaults["n_startup_trials"].default, defaults["n_min_trials"].default),
                **args}
        grace, samples = _whole(args, "grace_period", 0, source), _whole(args, "min_samples_required", 1, source)
    else:
        interval = _whole(args, "interval_steps", 1, source)
        if interval > budget.eval_every:
            raise ConfigError(f"Ray judges a trial at every evaluation (every {budget.eval_every} steps); Optuna with "
                              f"interval_steps {interval} would skip some", source=source,
                              key="pruner.args.interval_steps", value=interval,
                              allowed=f"1 to budget.eval_every ({budget.eval_every}): all mean the same here")
        grace = _whole(args, "n_warmup_steps", 0, source)
        samples = max(_whole(args, "n_startup_trials", 0, source), _whole(args, "n_min_trials", 1, source), 1)
    # hard_stop: stop, not pause, a trial below the median. min_time_slice inf: never pause a trial that has
    # too few others to compare with (a finite one still pauses at the first such report: see the module doc).
    return {"grace_period": grace, "min_samples_required": samples, "hard_stop": True, "min_time_slice": math.inf}


def _pbt(args: dict, budget, space) -> dict:
    return {"perturbation_interval": args.pop("perturbation_interval", budget.eval_every),
            "hyperparam_mutations": pbt_mutations(args.pop("mutations", None), space), **args}


def pbt_mutations(given: dict | None, space) -> dict:
    """What PBT may change while training: the space's own ranges for learning rate, weight decay and
    dropout by default; `mutations: {name: [values] | {low, high, log}}` to choose.

    Example:
        >>> from spaces import resolve_space
        >>> sorted(pbt_mutations({"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
        ...                      resolve_space("lora-quick")))
        ['learning_rate']
    """
    from ray import tune

    if given is None:
        given = {}
        for name, param in space.params().items():
            if name in ("learning_rate", "weight_decay", "lora_dropout") and name in space.searched_names:
                given[name] = ({"low": param.low, "high": param.high, "log": param.log}
                               if param.type == "float" else list(param.choices))
    # A param PBT changes must exist in every trial: try the space on a throwaway in-memory study.
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    samples = [space.sample(probe.ask()) for _ in range(32)]
    mutations = {}
    for name, values in given.items():
        if any(name not in sample for sample in samples):
            raise ConfigError("PBT can only mutate a param every trial has; this one is conditional (or not in the "
                              "space)", key=f"pruner.args.mutations.{name}", value=values)
        if name not in PBT_MUTABLE:
            raise ConfigError("PBT cannot change this param while training (the adapter's shape or the "
                              "objective depends on it)", key=f"pruner.args.mutations.{name}", value=values,
                              allowed=list(PBT_MUTABLE))
        if isinstance(values, dict):
            low, high = float(values["low"]), float(values["high"])
            mutations[name] = tune.loguniform(low, high) if values.get("log") else tune.uniform(low, high)
        else:
            mutations[name] = list(values)
    if not mutations:
        raise ConfigError("PBT has nothing to mutate: the space searches none of learning_rate, weight_decay, "
                          "lora_dropout", key="pruner.args.mutations", hint="Fix: give mutations, e.g. "
                          "{learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}}")
    return mutations
