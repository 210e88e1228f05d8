"""scripts/bench_ddp_buffers.py --quick: two gloo ranks time a LoRA step with and without DDP's buffer broadcast."""

from __future__ import annotations

import pytest
from conftest import load_script

bench = load_script("bench_ddp_buffers")
pytestmark = pytest.mark.slow  # two rank processes (~15 s)


def test_quick_run_times_both_sides(capsys):
    medians = bench.main(["--quick"])
    assert set(medians) == {True, False} and all(ms > 0 for ms in medians.values())
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("buffer broadcast: ")
