"""The `risk` pruner: prune as hard as completed curves allow, with the chance of losing a top-k trial bounded.

A median rule or successive halving has one fixed aggressiveness, right on some sweeps and ruinous on others
(scripts/bench_search.py: on curves where the best configurations start slowly, TPE + median lost them in more
than half the seeds). This rule reads how aggressive it may be off completed curves, as OptunaHub's
ConformalPruner calibrates on earlier runs. At each evaluation step s the reference curves give a centre (their
median there) and a spread (their inter-quartile range); a curve's *lag* at s is how far behind the centre it is,
in spreads. Each reference trial whose final value ranks in the top `top_k` has a score, its worst lag over every
decision step; with n such scores, the limit R is the ceil((n + 1)(1 - max_risk))-th smallest (split-conformal
prediction on whole curves). A trial is pruned at a step where its lag exceeds R. A new trial that will end in the
top k is exchangeable with those n, so the chance that its worst lag exceeds R -- that it is pruned at any step --
is at most `max_risk`; taking the worst lag over the steps spends no bound on multiple testing. Until there are
n >= 1/max_risk - 1 such curves (and `min_references`), nothing is pruned.

References: the study's own completed trials that trained their whole budget, or those of an earlier study of
the same task (`reference`: a study file, `.journal` or `.db`, with `reference_study` when it holds several),
plus the study's own as they complete.

Example:
    >>> RiskPruner(max_risk=0.1, top_k=3).max_risk
    0.1
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState


class RiskPruner(optuna.pruners.BasePruner):
    """Args:
        max_risk: the chance, at most, that a trial which would finish in the top `top_k` is pruned.
        top_k: which trials the bound protects: those whose final value would rank in the top k of the references.
        min_references: top-k reference curves needed before anything is pruned (at least 1/alpha - 1 are).
        n_warmup_steps: no pruning before this step.
        reference: a study file (.journal or .db) of an earlier sweep of the same task and budget.
        reference_study: the study's name in that file (needed when it holds several).
        max_steps: the trial budget's, set by the backend: a reference curve must reach it.
    """

    def __init__(self, max_risk: float = 0.2, top_k: int = 5, min_references: int | None = None,
                 n_warmup_steps: int = 0, reference: str | None = None, reference_study: str | None = None,
                 max_steps: int | None = None) -> None:
        if not 0.0 < max_risk < 1.0:
            raise ValueError(f"max_risk must be between 0 and 1, got {max_risk}")
        if top_k < 1 or n_warmup_steps < 0:
            raise ValueError("top_k must be >= 1 and n_warmup_steps >= 0")
        self.max_risk, self.top_k, self.n_warmup_steps = float(max_risk), int(top_k), int(n_warmup_steps)
        self.min_references = int(min_references) if min_references is not None else None
        self.max_steps = max_steps
        self.reference_trials = _load_reference(reference, reference_study) if reference else []

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps or (self.max_steps is not None and step >= self.max_steps):
            return False
        threshold = self.threshold(study, step)
        if threshold is None:
            return False
        value = trial.intermediate_values[step]
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        return value > threshold if minimize else value < threshold

    def threshold(self, study: optuna.Study, step: int) -> float | None:
        """The value at `step` a trial may not be worse than (None: too few references to bound the risk)."""
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        curves = [t.intermediate_values for t in self._references(study)]
        finals = [curve[max(curve)] for curve in curves]
        top = [curves[i] for i in sorted(range(len(curves)), key=lambda i: sign * finals[i])[:self.top_k]]
        needed = max(self.min_references or 0, math.ceil(1 / self.max_risk) - 1)
        if len(top) < needed or not top:
            return None
        scales = self._scales(curves)
        if step not in scales:
            return None
        scores = sorted(max((sign * (curve[s] - centre) / spread for s, (centre, spread) in scales.items()
                             if s in curve), default=-math.inf) for curve in top)
        rank = math.ceil((len(scores) + 1) * (1 - self.max_risk))  # 1-based
        if rank > len(scores):
            return None
        centre, spread = scales[step]
        return centre + sign * scores[rank - 1] * spread

    def _references(self, study: optuna.Study) -> list[FrozenTrial]:
        own = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [t for t in self.reference_trials + own if t.intermediate_values and t.value is not None
                and (self.max_steps is None or max(t.intermediate_values) >= self.max_steps)]

    def _scales(self, curves: list[dict[int, float]]) -> dict[int, tuple[float, float]]:
        """{decision step: (median, inter-quartile range) of the reference values there}."""
        import numpy as np

        scales = {}
        steps = sorted({s for curve in curves for s in curve if s >= self.n_warmup_steps
                        and (self.max_steps is None or s < self.max_steps)})
        for s in steps:
            values = np.array([curve[s] for curve in curves if s in curve], dtype=float)
            if len(values) < 2:
                continue
            q1, median, q3 = np.percentile(values, [25, 50, 75])
            scales[s] = (float(median), float(q3 - q1) or 1e-12)
        return scales


def _load_reference(path: str, name: str | None) -> list[FrozenTrial]:
    """The completed trials of the study in a study file (Optuna's own storages: a journal file or SQLite)."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    file = Path(path).expanduser()
    if not file.exists():
        raise ValueError(f"reference study file {file} does not exist")
    storage = JournalStorage(JournalFileBackend(str(file))) if file.suffix == ".journal" else f"sqlite:///{file}"
    summaries = optuna.get_all_study_summaries(storage)
    if name is None and len(summaries) != 1:
        raise ValueError(f"{file} holds {len(summaries)} studies ({', '.join(s.study_name for s in summaries)}): "
                         "name one with reference_study")
    study = optuna.load_study(study_name=name or summaries[0].study_name, storage=storage)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
