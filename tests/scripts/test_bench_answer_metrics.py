"""scripts/bench_answer_metrics.py --quick: exact_match and choice_accuracy timed on the same rows of real trials."""

from __future__ import annotations

import pytest
from conftest import load_script

bench = load_script("bench_answer_metrics")
pytestmark = pytest.mark.slow  # three short trials and their scoring (~20 s)


def test_quick_run_times_both_metrics_and_compares_loss_with_accuracy(capsys):
    summary = bench.main(["--quick", "--repeats", "1"])
    assert len(summary["trials"]) == 3
    for trial in summary["trials"]:
        assert all(ms > 0 for ms in trial["ms_per_row"].values())
        assert 0.0 <= trial["agreement"] <= 1.0 and 0.0 <= trial["choice_accuracy"] <= 1.0
    assert -1.0 <= summary["spearman_loss_accuracy"] <= 1.0 and 0.25 <= summary["majority"] <= 1.0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("loss-best trial ")
