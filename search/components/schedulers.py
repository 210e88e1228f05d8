"""Pausing schedulers: multi-fidelity search that pauses trials and resumes the promising ones, exactly.

Optuna's pruners stop a trial for ever on a few noisy evaluations, and the stopped trial's training is lost.
ftsweep checkpoints a trial and resumes it exactly (objectives/engine/checkpoint.py), so these schedulers
*pause* a trial at a rung instead (search/store/pausing.py keeps the state in the study), and *promote* a
paused trial later, which continues from its checkpoint on any worker. They are `pruner:` choices:

| name     | what it does                                                                                       |
|----------|----------------------------------------------------------------------------------------------------|
| asha     | asynchronous successive halving with promotions (Li et al., 2020, the variant that pauses): a    |
|          | trial pauses at each rung; one in the top 1/reduction_factor of the trials that reached the rung  |
|          | is promoted to the next, the highest rung first, before any new trial starts                       |
| hyperband| asha in several brackets, each with its own first rung (min_steps * reduction_factor**b), trials   |
|          | spread over them as Hyperband spreads its budget (Li et al., 2018), paused trials resumed        |
| curve    | asha's rungs, ranked by each trial's predicted final value, fitted on the study's own curves: the |
|          | whole eval history (level and recent trend) of every trial that went further (freeze-thaw style)   |

Arguments (all): `min_steps` (the first rung, the grace every trial trains; default the budget's eval_every),
`reduction_factor` (default 3), `max_steps` (default the budget's). Rungs are rounded up to evaluation steps.
`curve` also takes `min_references` (curves needed before predictions replace raw values, default 4).

They stop nothing themselves: at each evaluation the Optuna backend asks `pause(study, trial, lineages)`, and
before each new trial `promote(study, lineages)` (search/store/pausing.py and queue.py, which read the study's
trials into `Lineage`s). Paused trials no promotion reaches are ended when nothing else is left: recorded pruned
at the step they reached.

Example:
    >>> AshaScheduler(min_steps=10, reduction_factor=3, max_steps=90).rungs
    [10, 30]
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial



@dataclass
class Lineage:
    """A configuration's whole run across its pauses (search/store/pausing.py `lineages` builds them from a study):
    the trial standing for it now and its curve so far."""

    root: int  # the number of its first trial (brackets and ties are decided by it)
    number: int  # the trial that holds its curve now (a paused trial's own number while it waits)
    curve: dict[int, float] = field(default_factory=dict)  # step -> the sweep metric
    state: str = "running"  # running, paused, complete, pruned
    step: int = field(init=False)  # the last step of its curve

    def __post_init__(self) -> None:
        self.step = max(self.curve) if self.curve else 0


class PausingScheduler(optuna.pruners.BasePruner):
    """What the backend asks a pausing scheduler: `pause` at an evaluation, `promote` before a new trial; both see
    every configuration of the study as a `Lineage` ({number: lineage})."""

    pauses = True

    def __init__(self, min_steps: int = 1, reduction_factor: int = 3, max_steps: int = 100,
                 eval_every: int | None = None) -> None:
        if reduction_factor < 2 or min_steps < 1 or max_steps < 1:
            raise ValueError("reduction_factor must be >= 2, min_steps and max_steps >= 1")
        self.min_steps, self.reduction_factor, self.max_steps = int(min_steps), int(reduction_factor), int(max_steps)
        self.eval_every = int(eval_every or 1)
        self.rungs = self._rungs(self.min_steps)
        self._sign = 1.0  # +1 to minimize, -1 to maximize: set from the study at each decision

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return False  # never stopped for ever: paused, and ended only when nothing else is left

    def _rungs(self, first: int) -> list[int]:
        """The rung steps from `first` on, each rounded up to an evaluation step, below max_steps."""
        rungs, step = [], float(first)
        while True:
            rung = int(math.ceil(step / self.eval_every - 1e-9)) * self.eval_every
            if rung >= self.max_steps:
                return rungs
            if not rungs or rung > rungs[-1]:
                rungs.append(rung)
            step *= self.reduction_factor

    def bracket_of(self, lineage: Lineage) -> int:
        """The bracket a configuration belongs to (one bracket unless Hyperband's)."""
        return 0

    def decides_at(self, step: int) -> bool:
        """Whether `step` is a rung of some bracket: elsewhere a trial goes on, and nothing need be read."""
        return step in self.rungs

    def rungs_of(self, lineage: Lineage) -> list[int]:
        return self.rungs

    def score(self, study: optuna.Study, lineage: Lineage, step: int, everyone: dict[int, Lineage]) -> float:
        """What ranks `lineage` at rung `step` (lower is better): its value there, sign-adjusted."""
        return self._sign * _value_at(lineage.curve, step)

    def _leaders(self, study: optuna.Study, everyone: dict[int, Lineage]) -> dict[tuple[int, int], set[int]]:
        """{(bracket, rung): the numbers of the lineages in the top 1/reduction_factor of those that reached it}."""
        self._sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0  # for score()
        reached: dict[tuple[int, int], list[tuple[float, int, int]]] = {}
        for lineage in everyone.values():
            bracket = self.bracket_of(lineage)
            for rung in self.rungs_of(lineage):
                if lineage.step >= rung:
                    reached.setdefault((bracket, rung), []).append(
                        (self.score(study, lineage, rung, everyone), lineage.root, lineage.number))
        leaders = {}
        for key, rows in reached.items():
            rows.sort()
            leaders[key] = {number for _, _, number in rows[:len(rows) // self.reduction_factor]}
        return leaders

    def _promotions(self, study: optuna.Study, everyone: dict[int, Lineage]) -> list[tuple[int, Lineage]]:
        """(rung, lineage) of every paused lineage a rung promotes now."""
        leaders = self._leaders(study, everyone)
        found = []
        for lineage in everyone.values():
            rung = _rung_of(self.rungs_of(lineage), lineage.step) if lineage.state == "paused" else None
            if rung is not None and lineage.number in leaders.get((self.bracket_of(lineage), rung), ()):
                found.append((rung, lineage))
        return found

    def pause(self, study: optuna.Study, trial: FrozenTrial, everyone: dict[int, Lineage]) -> bool:
        """Whether `trial`, at its last evaluation, pauses (rather than going on)."""
        step = trial.last_step
        lineage = everyone.get(trial.number)
        if step is None or lineage is None or step not in self.rungs_of(lineage):
            return False
        if trial.number not in self._leaders(study, everyone).get((self.bracket_of(lineage), step), ()):
            return True
        # Promoted at once, unless a paused trial waits at a higher rung: that promotion comes first.
        return any(rung > step for rung, _ in self._promotions(study, everyone))

    def finish(self, study: optuna.Study, everyone: dict[int, Lineage]) -> Lineage | None:
        """When nothing else is left: the paused lineage to resume to the end if no configuration has completed
        yet (the best at the highest rung), so a sweep always has a full-length trial to pick, export and train;
        None once one has (the paused ones left are then ended)."""
        if any(lineage.state == "complete" for lineage in everyone.values()):
            return None
        paused = [lineage for lineage in everyone.values() if lineage.state == "paused"]
        if not paused:
            return None
        self._leaders(study, everyone)  # sets the direction (and curve_promote's model) for score()
        return min(paused, key=lambda lineage: (-lineage.step, self.score(study, lineage, lineage.step, everyone),
                                                lineage.root))

    def promote(self, study: optuna.Study, everyone: dict[int, Lineage]) -> Lineage | None:
        """The paused lineage to resume now (the highest rung first, then the best), or None: start a new one."""
        candidates = [(-rung, self.score(study, lineage, rung, everyone), lineage.root, lineage)
                      for rung, lineage in self._promotions(study, everyone)]
        return min(candidates, key=lambda c: c[:3])[3] if candidates else None


class AshaScheduler(PausingScheduler):
    """Asynchronous successive halving with promotions (see the module docstring).

    Args:
        min_steps: the first rung: every trial trains this many steps before it may pause.
        reduction_factor: one in this many trials at a rung is promoted to the next.
        max_steps, eval_every: the trial budget's (set by the backend).
    """

    def __init__(self, min_steps: int = 1, reduction_factor: int = 3, max_steps: int = 100,
                 eval_every: int | None = None) -> None:
        super().__init__(min_steps, reduction_factor, max_steps, eval_every)


class HyperbandScheduler(PausingScheduler):
    """Hyperband's brackets, each an ASHA with promotions from its own first rung.

    Bracket b's first rung is min_steps * reduction_factor**b; a configuration's bracket is drawn from its
    first trial's number (deterministic on every worker), in proportion to Hyperband's number of
    configurations per bracket, (B + 1) / (b' + 1) * reduction_factor**b' with b' = B - b reductions."""

    def __init__(self, min_steps: int = 1, reduction_factor: int = 3, max_steps: int = 100,
                 eval_every: int | None = None) -> None:
        super().__init__(min_steps, reduction_factor, max_steps, eval_every)
        self.brackets = [self._rungs(self.min_steps * reduction_factor ** b) for b in range(
            max(1, int(math.floor(math.log(max(self.max_steps / self.min_steps, 1), reduction_factor) + 1e-9)) + 1))]
        top = len(self.brackets) - 1
        self.weights = [(top + 1) / (top - b + 1) * reduction_factor ** (top - b) for b in range(len(self.brackets))]

    def bracket_of(self, lineage: Lineage) -> int:
        draw = (zlib.crc32(str(lineage.root).encode()) % 10_000) / 10_000 * sum(self.weights)
        for index, weight in enumerate(self.weights):
            draw -= weight
            if draw < 0:
                return index
        return len(self.weights) - 1

    def rungs_of(self, lineage: Lineage) -> list[int]:
        return self.brackets[self.bracket_of(lineage)]

    def decides_at(self, step: int) -> bool:
        return any(step in rungs for rungs in self.brackets)


class CurveScheduler(PausingScheduler):
    """ASHA's rungs and quotas, with each configuration ranked by its predicted value further on.

    The prediction is fitted on the study's own curves. At a rung, the horizon is the furthest step that at least
    `min_references` configurations have reached beyond it (the budget's end once enough have completed); a ridge
    regression of their value there on their value at the rung and their trend into it (the change over the last
    quarter of the curve) predicts every configuration's value at the horizon, so a trial still improving fast
    ranks above a flat one at the same value. Until `min_references` configurations have gone further, the raw
    value ranks (as asha's).
    """

    def __init__(self, min_steps: int = 1, reduction_factor: int = 3, max_steps: int = 100,
                 eval_every: int | None = None, min_references: int = 4) -> None:
        super().__init__(min_steps, reduction_factor, max_steps, eval_every)
        if min_references < 2:
            raise ValueError("min_references must be >= 2")
        self.min_references = int(min_references)
        self._fits: dict[int, list[float]] = {}  # rung -> the model's weights, refitted at every decision

    def _leaders(self, study: optuna.Study, everyone: dict[int, Lineage]) -> dict[tuple[int, int], set[int]]:
        self._fits = {}
        steps = sorted((lineage.step for lineage in everyone.values()), reverse=True)
        for rung in self.rungs:
            further = [step for step in steps if step > rung]
            if len(further) < self.min_references:
                continue
            horizon = further[self.min_references - 1]  # reached by at least min_references configurations
            references = [lineage for lineage in everyone.values() if lineage.step >= horizon]
            rows = [_features(r.curve, rung, self.eval_every) for r in references]
            self._fits[rung] = _ridge(rows, [_value_at(r.curve, horizon) for r in references])
        return super()._leaders(study, everyone)

    def score(self, study: optuna.Study, lineage: Lineage, step: int, everyone: dict[int, Lineage]) -> float:
        weights = self._fits.get(step)
        if weights is None:
            return self._sign * _value_at(lineage.curve, step)
        return self._sign * _predict(weights, _features(lineage.curve, step, self.eval_every))


def rung_plan(n_trials: int, rungs: list[int], reduction_factor: int, max_steps: int) -> list[tuple[int, float]]:
    """(step, configurations expected to reach it) at each rung and at max_steps, when one in `reduction_factor`
    goes on from each rung (successive halving's arithmetic, promotions or stops alike).

    Example:
        >>> rung_plan(27, [5, 15], 3, 40)
        [(5, 27.0), (15, 9.0), (40, 3.0)]
    """
    plan, configs = [], float(n_trials)
    for rung in rungs:
        plan.append((rung, configs))
        configs /= reduction_factor
    plan.append((max_steps, configs))
    return plan


def expected_steps(plan: list[tuple[int, float]]) -> float:
    """The training steps a `rung_plan` costs: each configuration pays the steps up to the rung it stops at, once
    (a promoted trial resumes, it does not train again)."""
    total, previous = 0.0, 0
    for step, configs in plan:
        total += configs * (step - previous)
        previous = step
    return total


def _value_at(curve: dict[int, float], step: int) -> float:
    """The curve's value at `step` (its last evaluation at or before it)."""
    if step in curve:
        return curve[step]
    steps = [s for s in curve if s <= step]
    return curve[max(steps)] if steps else math.inf


def _rung_of(rungs: list[int], step: int) -> int | None:
    """The highest rung at or below `step`."""
    below = [rung for rung in rungs if rung <= step]
    return max(below) if below else None


def _features(curve: dict[int, float], step: int, eval_every: int) -> list[float]:
    """(1, value at step, change per step over the last quarter of the curve up to step)."""
    value = _value_at(curve, step)
    earlier = [s for s in curve if s <= step - max(eval_every, step // 4)]
    trend = (value - curve[max(earlier)]) / (step - max(earlier)) * step if earlier else 0.0
    return [1.0, value, trend]


def _ridge(rows: list[list[float]], targets: list[float], penalty: float = 1e-3) -> list[float]:
    import numpy as np

    x, y = np.asarray(rows, dtype=float), np.asarray(targets, dtype=float)
    finite = np.isfinite(x).all(axis=1) & np.isfinite(y)
    x, y = x[finite], y[finite]
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale
    reg = penalty * np.eye(xs.shape[1])
    reg[0, 0] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(xs.T @ xs + reg, xs.T @ y) / scale
    return weights.tolist()


def _predict(weights: list[float], features: list[float]) -> float:
    value = sum(w * f for w, f in zip(weights, features))
    return value if math.isfinite(value) else math.inf
