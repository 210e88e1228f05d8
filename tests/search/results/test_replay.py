"""`ftsweep replay` (search/results/replay.py): strategies simulated on a study's full curves, with ftsweep's own
pruners, schedulers, queue and pausing state; on synthetic tables where the right answer is known, and on a real
sweep of the tiny model."""

from __future__ import annotations

import json
import math

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from search.cli import main
from search.results.replay import CurveTable, Strategy, compare, quartiles, simulate
from spaces import ConfigError


def _table(n: int = 30, max_steps: int = 27, eval_every: int = 3) -> CurveTable:
    """n configurations whose curves never cross: the one with the lowest learning rate index is best at every
    step, so early values rank configurations as their final values do (a table multi-fidelity wins on)."""
    params, curves = [], []
    for k in range(n):
        lr = 1e-4 * (1.2 ** k)
        params.append({"learning_rate": lr, "lora_r": [4, 8][k % 2]})
        curves.append({s: 1.0 + k / n + 2.0 / (1 + s) for s in range(eval_every, max_steps + 1, eval_every)})
    return CurveTable(params, curves, {"learning_rate": FloatDistribution(1e-5, 1.0, log=True),
                                       "lora_r": CategoricalDistribution([4, 8])}, max_steps, eval_every)


def test_nearest_maps_params_to_the_closest_recorded_configuration():
    table = _table()
    assert table.nearest({"learning_rate": 1e-4 * 1.2 ** 7 * 1.01, "lora_r": 8}) == 7
    assert table.best() == (0, table.curves[0][27])
    assert table.target(0.01) == pytest.approx(table.curves[0][27] * 1.01)


def test_without_pruning_every_trial_trains_its_whole_budget():
    result = simulate(_table(), Strategy.parse("random+none"), seed=0, n_trials=10)
    assert result.steps == 10 * 27 and result.trials == result.complete == 10


def test_a_pausing_scheduler_trains_fewer_steps_pauses_and_resumes_and_ends_everything():
    table = _table()
    plain = simulate(table, Strategy.parse("random+none"), seed=1, n_trials=30)
    paused = simulate(table, Strategy.parse("random+asha_promote:reduction_factor=3"), seed=1, n_trials=30)
    # Rungs 3 and 9 of 27 steps, one in three promoted: about 3 + 6/3 + 18/9 = 7 steps per configuration.
    assert paused.steps < plain.steps / 2
    assert paused.trials > 30  # the continuations of paused trials are trials too
    assert 1 <= paused.complete < 30
    # Curves that never cross: the best configuration, once sampled, is always promoted to the end.
    assert paused.winner_completed == paused.winner_sampled


def test_compare_ranks_by_steps_to_target_and_counts_unreached_seeds_as_infinite():
    table = _table()
    summaries = compare(table, [Strategy.parse("random+none"), Strategy.parse("random+asha_promote")], seeds=4,
                        n_trials=30, stop_at_target=True)
    assert [s.strategy for s in summaries][0] == "random+asha_promote"
    assert all(0 <= s.reached <= 1 for s in summaries)
    assert quartiles([1.0, 2.0, math.inf, math.inf]) == (1.75, math.inf)


def test_a_bad_strategy_is_a_clear_error():
    with pytest.raises(ConfigError, match="SAMPLER\\+PRUNER"):
        Strategy.parse("tpe")
    with pytest.raises(ConfigError, match="unknown pruner|no pruner"):
        simulate(_table(), Strategy.parse("tpe+nosuch"), seed=0, n_trials=2)


def test_replay_of_a_real_sweep(write_sweep, capsys):
    path = write_sweep(n_trials=6, budget={"max_steps": 8, "eval_every": 2})
    assert main(["launch", str(path)]) == 0
    capsys.readouterr()
    assert main(["replay", str(path), "--seeds", "3", "--json", "--strategy", "random+none",
                 "--strategy", "tpe+asha_promote:reduction_factor=2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["configurations"] == 6 and report["trials"] == 6 and report["seeds"] == 3
    by_name = {row["strategy"]: row for row in report["strategies"]}
    assert by_name["random+none"]["steps"] == 6 * 8
    assert by_name["tpe+asha_promote:reduction_factor=2"]["steps"] < 6 * 8
    assert main(["replay", str(path), "--seeds", "2", "--strategy", "random+none"]) == 0
    assert "random+none" in capsys.readouterr().out


def test_a_study_without_full_curves_is_refused(write_sweep):
    path = write_sweep(n_trials=1, budget={"max_steps": 4, "eval_every": 2})
    assert main(["launch", str(path)]) == 0
    assert main(["replay", str(path)]) == 2
