"""The `paired` pruner: stop a trial whose answers, row by row, are worse than another trial's at the same step.

Median and percentile rules compare one number per trial; two trials scored on the same validation rows can
be compared row by row, which tells a real difference from noise. At each evaluation the pruner takes the
per-example scores the trial wrote (objectives/evaluation/scores.py: answer metrics such as choice_accuracy, the same
rows in every trial) and those of the trial ranked in the middle so far at the same step (`against: median`,
the default) or of the best one (`against: best`), and runs a one-sided Wilcoxon signed-rank test on the
paired differences (scipy; zero differences split between the signs, as Optuna's WilcoxonPruner does). The
trial is pruned when p < `p_threshold`: it is worse, not just behind by chance. Optuna's own WilcoxonPruner
reads per-instance scores as the steps of one evaluation; this is the other reading, a paired test at each
step of a learning curve.

Why the median trial by default (scripts/bench_paired_pruning.py, docs/benchmarks.md): against the best trial
the test is right that a late starter is behind at an early step, and it pruned the eventual winner in 47 % of
replayed orders whatever the threshold; against the median trial it pruned more trials than the median rule at
the same training cost and the winner in 4 %.

Example:
    >>> PairedPruner(p_threshold=0.05).p_threshold
    0.05
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.evaluation.scores import paired, read_scores


class PairedPruner(optuna.pruners.BasePruner):
    """Args:
        p_threshold: prune when the one-sided test's p-value is below this (smaller: prunes less, surer).
        n_startup_trials: other trials that must have reached the step before any trial is pruned there.
        n_warmup_steps: no pruning before this step.
        min_rows: fewer rows scored by both trials than this and the trial is kept.
        against: "median" (the trial ranked in the middle so far at the step: the paired reading of the median
            rule) or "best" (the best trial so far at the step: prunes more, late starters included).
        scores_dir: where each trial's scores are (`<scores_dir>/trial-N/step-S.json`); set by the backend.
        metric: the sweep's metric, whose per-example scores are compared; set by the backend.
    """

    def __init__(self, p_threshold: float = 0.1, n_startup_trials: int = 2, n_warmup_steps: int = 0,
                 min_rows: int = 10, against: str = "median", scores_dir: str | Path | None = None,
                 metric: str | None = None) -> None:
        if not 0.0 < p_threshold < 1.0:
            raise ValueError(f"p_threshold must be between 0 and 1, got {p_threshold}")
        if n_startup_trials < 1 or n_warmup_steps < 0 or min_rows < 2:
            raise ValueError("n_startup_trials must be >= 1, n_warmup_steps >= 0 and min_rows >= 2")
        if against not in ("best", "median"):
            raise ValueError(f"against must be 'best' or 'median', got {against!r}")
        self.against = against
        self.p_threshold = p_threshold
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.min_rows = min_rows
        self.scores_dir = Path(scores_dir) if scores_dir is not None else None
        self.metric = metric
        self.last_p_value: float | None = None  # the last test's p-value (None: no test ran), for reports and tests

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        self.last_p_value = None
        step = trial.last_step
        if step is None or step < self.n_warmup_steps or self.scores_dir is None or self.metric is None:
            return False
        others = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                      TrialState.RUNNING))
                  if t.number != trial.number and step in t.intermediate_values]
        if len(others) < self.n_startup_trials:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranked = sorted(others, key=lambda t: t.intermediate_values[step], reverse=maximize)  # best first
        reference = ranked[0] if self.against == "best" else ranked[(len(ranked) - 1) // 2]
        value, reference_value = trial.intermediate_values[step], reference.intermediate_values[step]
        if (value >= reference_value) if maximize else (value <= reference_value):
            return False  # as good as the trial it is compared with: nothing to test
        mine = read_scores(self.scores_dir / f"trial-{trial.number}", step)
        theirs = read_scores(self.scores_dir / f"trial-{reference.number}", step)
        if not mine or not theirs or self.metric not in mine or self.metric not in theirs:
            return False
        own, reference_scores = paired(mine[self.metric], theirs[self.metric])
        differences = [a - b for a, b in zip(own, reference_scores)]
        if len(differences) < self.min_rows or not any(differences):
            return False
        from scipy.stats import wilcoxon

        # H1: this trial's scores are lower (maximize) / higher (minimize) than the other trial's on the same rows.
        result = wilcoxon(differences, alternative="less" if maximize else "greater", zero_method="zsplit")
        self.last_p_value = float(result.pvalue)
        return self.last_p_value < self.p_threshold
