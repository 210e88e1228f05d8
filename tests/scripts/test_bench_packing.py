"""scripts/bench_packing.py --quick: every K, with and without pruning, gets figures from real packed sweeps."""

from __future__ import annotations

import pytest
from conftest import load_script

bench = load_script("bench_packing")
pytestmark = pytest.mark.slow  # 8 fresh-interpreter sweeps (~1 min)


def test_quick_run_measures_every_pack_size(capsys, tmp_path):
    summary = bench.main(["--quick", "--cache", str(tmp_path / "reference.json")])
    out = capsys.readouterr().out
    assert set(summary["rows"]) == {f"K={k} {p}" for k in (1, 2, 4, 8) for p in ("median", "none")}
    for row in summary["rows"].values():
        assert row["trials_per_hour"] > 0 and row["startup_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["reached"] == 1  # tolerance 1: the first completed trial reaches the target
    assert out.strip().splitlines()[-1].startswith(f"packed K={summary['best']} / K=1: trials per hour ")


def test_per_trial_times_every_pack_size_against_a_trial_alone(capsys):
    seconds = bench.main(["--per-trial", "--quick", "--slots", "1,2"])
    assert set(seconds) == {"alone", "K=1", "K=2"} and all(v and min(v) > 0 for v in seconds.values())
    assert "| K=2 |" in capsys.readouterr().out
