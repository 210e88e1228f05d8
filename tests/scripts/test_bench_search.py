"""scripts/bench_search.py --quick: two small tables of full curves recorded with ftsweep, every strategy simulated
on both, the last line in the form the README and the closing note quote."""

from __future__ import annotations

import re

import pytest
from conftest import load_script

bench = load_script("bench_search")
pytestmark = pytest.mark.slow  # 2 x 12 eight-step trials in two workers, then the simulations (~1 min)


def test_quick_run_records_both_tables_and_simulates_every_strategy(tmp_path, capsys):
    figures = bench.main(["--quick", "--cache", str(tmp_path)])
    assert set(figures["tables"]) == {"demo", "intents"}
    assert all(table["configs"] == 12 for table in figures["tables"].values())
    for per_table in figures["strategies"].values():
        assert set(bench.STRATEGIES) <= set(per_table)
        assert all(0.0 <= row["reached"] <= 1.0 for row in per_table.values())
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"search: default/random \S+, default/tpe\+median \S+, wall default/HF nan", last), last
    # The tables are the cache: a second run records nothing.
    bench.main(["--quick", "--cache", str(tmp_path)])
    assert "recording" not in capsys.readouterr().out
