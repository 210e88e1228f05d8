"""`ftsweep replay STUDY`: which sampler and pruner to use next time, simulated on a finished study's own curves.

A tabular simulator, as Syne Tune's blackbox repository and the HPO benchmarks (HPOBench, YAHPO) are: the study's
trials that trained their whole budget are the table (each configuration's params and full learning curve), and
a simulated sweep runs a real Optuna study in memory with the strategy's sampler and pruner or scheduler, where
"training" a trial to step s reads its curve. A sampled configuration the table does not hold gets the curve of
the nearest one it holds that this sweep has not tried yet (1-nearest neighbour on the searched params, log scales
where the space has them, as Syne Tune's surrogate blackboxes do; without repeats, as its tabulated ones restrict
configurations: a sampler's proposal next to a configuration already trained would otherwise train it again). The decisions are ftsweep's own: the same Optuna pruners, the same pausing
schedulers, the same queue and pausing state (search/store/queue.py, search/store/pausing.py) as a live sweep,
one trial at a time. Seconds per seed, so many seeds per strategy.

For each strategy, over the seeds:

| column           | what it is                                                                              |
|------------------|-----------------------------------------------------------------------------------------|
| steps            | optimizer steps trained in the whole simulated sweep (a resumed trial pays only its new steps) |
| steps to target  | steps trained until a trial *completed* within `tolerance` of the table's best final value  |
| reached          | the share of seeds that reached it within the sweep                                     |
| winner kept      | of the seeds that sampled the table's best configuration, the share where it completed     |

Example:
    >>> table = CurveTable.from_study(study)  # the doctest study: 2 trials, full curves
    >>> result = simulate(table, Strategy.parse("random+none"), seed=0, n_trials=4)
    >>> result.steps  # four trials of the 4-step budget, none stopped
    16
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from objectives import TrainBudget
from spaces import ConfigError

from ..components import PRUNERS, build_pruner, build_sampler
from ..settings import ComponentSpec
from ..store.pausing import mark_paused, park, pauses_now
from ..store.queue import NoTrialLeft, QueueStudy, to_be_ended, top_up_slots
from ..store.record import PAUSED_AT, RETRY_OF, STUDY_SWEEP, trial_by_number

# What `ftsweep replay` compares unless told otherwise: no pruning, Optuna's defaults, stop-only rungs, pausing.
DEFAULT_STRATEGIES = ("random+none", "tpe+none", "tpe+median", "tpe+successive_halving", "tpe+hyperband",
                      "tpe+asha_promote", "tpe+hyperband_promote", "tpe+curve_promote")


@dataclass(frozen=True)
class Strategy:
    """A sampler and a pruner (or scheduler), each with arguments: `tpe+asha_promote:reduction_factor=4`."""

    name: str
    sampler: ComponentSpec
    pruner: ComponentSpec

    @classmethod
    def parse(cls, text: str) -> "Strategy":
        """`SAMPLER+PRUNER[:arg=value,...]` (the arguments are the pruner's), e.g. `tpe+median:n_startup_trials=2`."""
        head, _, args = text.partition(":")
        sampler, plus, pruner = head.partition("+")
        if not plus or not sampler or not pruner:
            raise ConfigError("a replay strategy is SAMPLER+PRUNER[:arg=value,...]", key="--strategy", value=text,
                              hint="Example: tpe+asha_promote:reduction_factor=4")
        parsed: dict[str, Any] = {}
        for item in filter(None, args.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"pruner argument '{item}' is not arg=value", key="--strategy", value=text)
            parsed[key.strip()] = _number(value.strip())
        return cls(text, ComponentSpec(name=sampler.strip()), ComponentSpec(name=pruner.strip(), args=parsed))


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@dataclass
class CurveTable:
    """The full learning curves of a study: each configuration that trained its whole budget, its searched params
    and its sweep metric at every evaluation step."""

    params: list[dict[str, Any]]
    curves: list[dict[int, float]]
    distributions: dict[str, Any]
    max_steps: int
    eval_every: int
    minimize: bool = True
    _encoded: Any = field(default=None, repr=False)

    @classmethod
    def from_study(cls, study: optuna.Study) -> "CurveTable":
        """The table of `study`'s completed trials whose curve reaches the sweep's budget.max_steps."""
        if len(study.directions) > 1:
            raise ConfigError("replay ranks strategies by one metric, and this study has several", key="study",
                              value=study.study_name)
        budget = (study.user_attrs.get(STUDY_SWEEP) or {}).get("budget") or {}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        max_steps = int(budget.get("max_steps") or max((max(t.intermediate_values, default=0) for t in complete),
                                                       default=0))
        full = [t for t in complete if t.intermediate_values and max(t.intermediate_values) >= max_steps and t.params]
        if len(full) < 2:
            raise ConfigError(f"study '{study.study_name}' has {len(full)} trial(s) that trained their whole budget "
                              f"({max_steps} steps); replay needs full learning curves of several configurations",
                              key="study", value=study.study_name,
                              hint="Fix: replay a sweep run with `pruner: none` (or one that completed many trials).")
        distributions: dict[str, Any] = {}
        for trial in full:
            for name, dist in trial.distributions.items():
                distributions.setdefault(name, dist)
        full = [t for t in full if set(t.params) == set(distributions)]  # conditional params: the common shape only
        steps = sorted(full[0].intermediate_values)
        eval_every = int(budget.get("eval_every") or (steps[1] - steps[0] if len(steps) > 1 else max_steps))
        return cls([dict(t.params) for t in full], [dict(t.intermediate_values) for t in full], distributions,
                   max_steps, eval_every, study.direction == optuna.study.StudyDirection.MINIMIZE)

    @property
    def finals(self) -> list[float]:
        return [curve[max(curve)] for curve in self.curves]

    def best(self) -> tuple[int, float]:
        """(index, final value) of the table's best configuration."""
        finals = self.finals
        index = (min if self.minimize else max)(range(len(finals)), key=finals.__getitem__)
        return index, finals[index]

    def target(self, tolerance: float) -> float:
        """The value a completed trial must reach: within `tolerance` (relative) of the best final value."""
        best = self.best()[1]
        return best + abs(best) * tolerance if self.minimize else best - abs(best) * tolerance

    def nearest(self, params: dict[str, Any], exclude: set[int] | frozenset[int] = frozenset()) -> int:
        """The index of the table's configuration closest to `params`, among those not in `exclude` (unless every
        one is)."""
        import numpy as np

        if self._encoded is None:
            self._encoded = np.array([self._encode(p) for p in self.params])
        distance = ((self._encoded - np.array(self._encode(params))) ** 2).sum(axis=1)
        if len(exclude) < len(self.params):
            distance[list(exclude)] = np.inf
        return int(distance.argmin())

    def _encode(self, params: dict[str, Any]) -> list[float]:
        """Each searched param in [0, 1] (log scale where the distribution has one); categoricals one-hot."""
        out: list[float] = []
        for name, dist in sorted(self.distributions.items()):
            value = params.get(name)
            if isinstance(dist, CategoricalDistribution):
                out.extend(float(value == choice) for choice in dist.choices)
            elif isinstance(dist, (FloatDistribution, IntDistribution)):
                low, high, x = float(dist.low), float(dist.high), float(value)
                if dist.log:
                    low, high, x = math.log(low), math.log(high), math.log(x)
                out.append((x - low) / (high - low) if high > low else 0.0)
        return out


@dataclass
class SimulatedSweep:
    """One simulated sweep: its steps, when it reached the target (None: never) and what became of the winner."""

    steps: int = 0
    steps_to_target: int | None = None
    winner_sampled: bool = False
    winner_completed: bool = False
    trials: int = 0
    complete: int = 0


def simulate(table: CurveTable, strategy: Strategy, *, seed: int, n_trials: int, tolerance: float = 0.01,
             stop_at_target: bool = False) -> SimulatedSweep:
    """Run `strategy` for `n_trials` configurations on `table` (see the module docstring)."""
    optuna.logging.set_verbosity(logging.WARNING)
    entry = PRUNERS.entry(strategy.pruner.name, key="--strategy")
    if entry.capabilities.get("per_example"):
        raise ConfigError(f"the {entry.name} pruner reads per-example scores, which a curve table does not hold",
                          key="--strategy", value=strategy.name)
    budget = TrainBudget(max_steps=table.max_steps, eval_every=table.eval_every)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notes, once per seed
        sampler = build_sampler(strategy.sampler, None, seed=seed)
        pruner = build_pruner(strategy.pruner, budget=budget)
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(storage=storage, study_name="replay", direction="minimize" if table.minimize else "maximize")
        study = QueueStudy(study_name="replay", storage=storage, sampler=sampler, pruner=pruner,
                           waits_for_others=False)
        top_up_slots(study, n_trials)
        return _run(study, table, tolerance, stop_at_target)


def _run(study: QueueStudy, table: CurveTable, tolerance: float, stop_at_target: bool) -> SimulatedSweep:
    result = SimulatedSweep()
    target, winner = table.target(tolerance), table.best()[0]
    configs: dict[int, int] = {}  # trial number -> the table's configuration it trains
    reached = (lambda v: v <= target) if table.minimize else (lambda v: v >= target)
    while True:
        try:
            trial = study.ask(table.distributions)
        except NoTrialLeft:
            return result
        result.trials += 1
        start = 0
        origin_number = trial.user_attrs.get(RETRY_OF)
        if origin_number is not None:  # a paused trial resumed (or ended): its curve so far, as the backend replays it
            origin = trial_by_number(study, origin_number)
            start = int(origin.user_attrs.get(PAUSED_AT, 0))
            for step, value in sorted(origin.intermediate_values.items()):
                if step <= start:
                    trial.report(value, step)
        if to_be_ended(trial):
            study.tell(trial, state=TrialState.PRUNED)
            continue
        # A new trial gets the nearest configuration not tried yet in this sweep (a real sweep does not train
        # one configuration twice; a repeat would only be a nearest-neighbour artefact); a continuation its own.
        config = configs[origin_number] if origin_number is not None else table.nearest(trial.params,
                                                                                        set(configs.values()))
        configs[trial.number] = config
        curve = table.curves[config]
        result.winner_sampled |= config == winner
        outcome, previous = "complete", start
        for step in sorted(s for s in curve if s > start):
            result.steps += step - previous
            previous = step
            trial.report(curve[step], step)
            if step >= table.max_steps:
                break
            if trial.should_prune():
                outcome = "pruned"
                break
            if pauses_now(trial, step):
                mark_paused(trial, step)
                outcome = "paused"
                break
        if outcome == "complete":
            final = curve[max(curve)]
            study.tell(trial, final)
            result.complete += 1
            result.winner_completed |= config == winner
            if result.steps_to_target is None and reached(final):
                result.steps_to_target = result.steps
                if stop_at_target:
                    return result
        else:
            frozen = study.tell(trial, state=TrialState.PRUNED)
            if outcome == "paused":
                park(study, frozen)


@dataclass
class StrategySummary:
    """A strategy over many seeds."""

    strategy: str
    steps: float  # median steps of a whole sweep
    to_target: float  # median steps to target (inf: reached in fewer than half the seeds)
    to_target_iqr: tuple[float, float]
    reached: float  # share of seeds that reached the target
    winner_kept: float | None  # share of seeds sampling the winner where it completed (None: never sampled)
    runs: list[SimulatedSweep] = field(default_factory=list, repr=False)


def compare(table: CurveTable, strategies: list[Strategy], *, seeds: int, n_trials: int,
            tolerance: float = 0.01, stop_at_target: bool = False) -> list[StrategySummary]:
    """Every strategy on `seeds` seeds (seed k is the same for every strategy), fewest steps to target first."""
    summaries = []
    for strategy in strategies:
        runs = [simulate(table, strategy, seed=seed, n_trials=n_trials, tolerance=tolerance,
                         stop_at_target=stop_at_target) for seed in range(seeds)]
        to_target = [float(r.steps_to_target) if r.steps_to_target is not None else math.inf for r in runs]
        sampled = [r for r in runs if r.winner_sampled]
        summaries.append(StrategySummary(
            strategy.name, statistics.median(r.steps for r in runs), statistics.median(to_target),
            quartiles(to_target), sum(math.isfinite(v) for v in to_target) / len(runs),
            sum(r.winner_completed for r in sampled) / len(sampled) if sampled else None, runs))
    return sorted(summaries, key=lambda s: (s.to_target, s.steps))


def quartiles(values: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles, inf-aware (an unreached target counts as infinitely many steps)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0]

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
        if math.isinf(low) or math.isinf(high):
            return high if position - math.floor(position) else low
        return low + (high - low) * (position - math.floor(position))

    return at(0.25), at(0.75)
