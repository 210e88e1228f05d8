"""The `paired` pruner (search/components/paired_pruner.py): per-example scores kept in each trial's folder, and
a trial stopped only when its rows, paired with the best trial's at the same step, are significantly worse."""

from __future__ import annotations

import optuna
import pytest
import yaml
from scipy.stats import wilcoxon

from objectives.evaluation.scores import paired, read_scores, write_scores
from search.cli import main
from search.components.paired_pruner import PairedPruner
from search.store.storage import load_existing_study
from search.sweep import find_sweep_file

ROUTING_TEMPLATE = yaml.safe_load(find_sweep_file("routing").read_text())["objective"]["args"]["chat_template"]


def _study_with(tmp_path, trials: dict[int, list[float]], step: int = 10, pruner: PairedPruner | None = None):
    """A real Optuna study whose trials reported the mean of `scores` at `step`, each with its scores file."""
    pruner = pruner or PairedPruner(scores_dir=tmp_path, metric="choice_accuracy", n_startup_trials=1)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    decisions = {}
    for number, scores in trials.items():
        trial = study.ask()
        assert trial.number == number
        write_scores(tmp_path / f"trial-{number}", step, {"choice_accuracy": {"rows": list(range(len(scores))),
                                                                               "scores": scores}})
        trial.report(sum(scores) / len(scores), step)
        decisions[number] = (trial.should_prune(), pruner.last_p_value)
        study.tell(trial, sum(scores) / len(scores))
    return decisions


def test_a_trial_clearly_worse_row_by_row_is_pruned_and_one_behind_by_chance_is_kept(tmp_path):
    best = [1.0] * 24 + [0.0] * 6  # 80 %
    worse = [1.0] * 6 + [0.0] * 24  # 20 %: wrong on 18 rows the best gets right
    close = [1.0] * 23 + [0.0] * 7  # 77 %: one row apart
    decisions = _study_with(tmp_path, {0: best, 1: worse, 2: close})
    assert decisions[0] == (False, None)  # the first trial: nothing to compare with
    assert decisions[1][0] is True and decisions[1][1] < 0.001
    assert decisions[2][0] is False and decisions[2][1] > 0.1
    # The p-value is scipy's one-sided Wilcoxon signed-rank test on the paired differences.
    expected = wilcoxon([a - b for a, b in zip(worse, best)], alternative="less", zero_method="zsplit").pvalue
    assert decisions[1][1] == pytest.approx(expected)


def test_rows_are_paired_by_index_and_too_few_rows_decide_nothing(tmp_path):
    assert paired({"rows": [5, 1, 9], "scores": [1.0, 0.0, float("nan")]},
                  {"rows": [1, 5, 9], "scores": [1.0, 1.0, 1.0]}) == ([1.0, 0.0], [1.0, 1.0])
    pruner = PairedPruner(scores_dir=tmp_path, metric="choice_accuracy", n_startup_trials=1, min_rows=40)
    decisions = _study_with(tmp_path, {0: [1.0] * 30, 1: [0.0] * 30}, pruner=pruner)
    assert decisions[1] == (False, None)  # 30 rows < min_rows: kept, untested


def test_a_sweep_keeps_per_example_scores_and_prunes_only_on_a_significant_paired_difference(write_sweep, tmp_path):
    path = write_sweep(
        dataset={"source": "bundled:support-routing", "max_train_examples": 160, "max_eval_examples": 60},
        objective={"name": "causal_lm", "args": {"answer_pattern": "our (\\w+) team", "chat_template": ROUTING_TEMPLATE}},
        # Trials that learn the task and trials that barely move: the paired test has differences to find.
        space={"params": {"learning_rate": {"type": "categorical", "choices": [1.0e-5, 0.05]},
                          "lora_r": {"type": "fixed", "value": 8}}},
        metric="choice_accuracy",
        pruner={"name": "paired", "args": {"p_threshold": 0.2, "n_startup_trials": 1, "against": "best"}},
        n_trials=6, budget={"max_steps": 24, "eval_every": 8, "batch_size": 16, "eval_batch_size": 32,
                            "max_seq_length": 64})
    assert main(["launch", str(path)]) == 0
    study = load_existing_study("tiny", f"journal:///{tmp_path / 'runs' / 'tiny.journal'}")
    root = tmp_path / "runs" / "scores" / "tiny"
    rows = set()
    for trial in study.trials:
        for step, value in trial.intermediate_values.items():
            scores = read_scores(root / f"trial-{trial.number}", step)["choice_accuracy"]
            rows.add(tuple(scores["rows"]))  # the same validation rows in every trial, at every step
            assert sum(scores["scores"]) / len(scores["scores"]) == pytest.approx(value)
    assert len(rows) == 1 and len(next(iter(rows))) > 10
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and {t.params["learning_rate"] for t in pruned} == {1.0e-5}  # only the trials that barely moved
    for trial in pruned:
        # Re-test the decision from the files: worse than the best trial at that step, p < 0.2.
        step = max(trial.intermediate_values)
        others = [t for t in study.trials if t.number < trial.number and step in t.intermediate_values]
        best = max(others, key=lambda t: t.intermediate_values[step])
        own, theirs = paired(read_scores(root / f"trial-{trial.number}", step)["choice_accuracy"],
                             read_scores(root / f"trial-{best.number}", step)["choice_accuracy"])
        p = wilcoxon([a - b for a, b in zip(own, theirs)], alternative="less", zero_method="zsplit").pvalue
        assert p < 0.2


def test_the_paired_pruner_needs_a_metric_scored_row_by_row(write_sweep, capsys):
    path = write_sweep(pruner={"name": "paired"})  # the tiny sweep optimizes eval_loss
    assert main(["launch", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pruner compares trials row by row, and eval_loss is one number" in err and "choice_accuracy" in err


@pytest.mark.parametrize(("against", "pruned"), [("median", False), ("best", True)])
def test_against_the_median_trial_a_trial_close_to_it_is_kept(tmp_path, against, pruned):
    rows = 40
    scores = {0: [1.0] * 36 + [0.0] * 4,  # 90 %
              1: [1.0] * 20 + [0.0] * 20,  # 50 %: the median of the three before the last
              2: [1.0] * 16 + [0.0] * 24,  # 40 %
              3: [1.0] * 19 + [0.0] * 21}  # 47.5 %: one row behind the median trial, far behind the best
    assert all(len(s) == rows for s in scores.values())
    pruner = PairedPruner(scores_dir=tmp_path, metric="choice_accuracy", n_startup_trials=1, against=against)
    assert _study_with(tmp_path, scores, pruner=pruner)[3][0] is pruned
