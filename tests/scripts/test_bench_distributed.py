"""scripts/bench_distributed.py --quick: a trial alone and as process groups of 1 and 2 ranks, timed per step."""

from __future__ import annotations

import pytest
from conftest import load_script

bench = load_script("bench_distributed")
pytestmark = pytest.mark.slow  # rank processes (~20 s)


def test_quick_run_times_every_side_per_step(capsys):
    rows = bench.main(["--quick"])
    assert set(rows) == {"alone", "G=1", "G=2"}
    assert all(row["step_ms"] > 0 and row["first_eval_s"] > 0 for row in rows.values())
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("distributed path, 1 process(es) / alone: ")
