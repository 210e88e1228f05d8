"""scripts/bench_paired_pruning.py --quick: trials recorded unpruned, then replayed under each pruner."""

from __future__ import annotations

import pytest
from conftest import load_script

bench = load_script("bench_paired_pruning")
pytestmark = pytest.mark.slow  # four short trials, then the replays (~20 s)


def test_quick_run_replays_every_pruner_on_the_recorded_trials(capsys):
    result = bench.main(["--quick"])
    assert len(result["trials"]) == 4 and all(len(t["curve"]) == 2 for t in result["trials"])
    summary = result["summary"]
    assert summary["none"] == {"pruned": 0.0, "steps": 1.0, "winner_pruned": 0.0, "regret": 0.0}
    for row in summary.values():
        assert 0.0 <= row["pruned"] <= 1.0 and 0.5 <= row["steps"] <= 1.0 and row["regret"] >= 0.0
    assert capsys.readouterr().out.count("\n") >= 8
