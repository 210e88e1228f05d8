"""scripts/bench_sequence_packing.py --quick: every workload and mode gets figures from real trials, and the
three chat tokenization paths agree."""

from __future__ import annotations

import pytest
from conftest import load_script

bench = load_script("bench_sequence_packing")
pytestmark = pytest.mark.slow  # 8 real trials and three tokenizations of the chat data (~12 s)


def test_quick_run_measures_every_mode_on_both_workloads(capsys):
    results = bench.main(["--quick"])
    out = capsys.readouterr().out
    for workload in ("demo", "chat"):
        modes = results[workload]
        assert list(modes) == list(bench.MODES)
        # Padding-free batches compute no padding; padded ones do (lengths differ); packing sees more examples.
        assert modes["padded"]["padding_share"] > 0 and modes["padding_free"]["padding_share"] == 0
        assert modes["packing+padding_free"]["padding_share"] == 0
        assert modes["padding_free"]["real_tokens"] == modes["padded"]["real_tokens"]
        assert modes["packing"]["examples"] >= modes["padded"]["examples"]
        assert all(r["tokens_per_s"] > 0 and r["wall_s"] > 0 for r in modes.values())
    assert "all three give the same ids and labels: True" in out
    assert out.strip().splitlines()[-1].startswith("packing / padded on chat: real tokens/s ")
