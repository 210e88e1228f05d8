"""scripts/bench_parallel.py on a tiny budget: both sides run the same trials and the table is printed (not timed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_parallel.py"


def test_bench_parallel_runs_both_sides_on_equal_work():
    out = subprocess.run([sys.executable, str(SCRIPT), "--trials", "2", "--steps", "4", "--reps", "1", "--workers", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert len(re.findall(r"2 complete", out)) == 2, out
    assert re.search(r"\| 1 process, all cores \| [\d.]+ \| [\d.]+ \|", out)
    assert re.search(r"\| 2 workers, 1 thread each \| [\d.]+ \| [\d.]+ \|", out)
    assert re.search(r"per-core / one: wall [\d.]+, trial phase [\d.]+", out)
