"""Tests for scripts/bench_gpu.py: its --tiny CPU run goes through the bare loop and the real trial path."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


bench = load_script("bench_gpu")


def test_tiny_run_reports_both_throughputs_and_the_gap_between_trials(tmp_path, capsys):
    model_dir = tmp_path / "model"
    summary = bench.main(["--tiny", "--model-dir", str(model_dir), "--json", str(tmp_path / "bench.json")])
    out = capsys.readouterr().out

    # Figures only: timings on a shared CPU say nothing, so nothing is asserted about their size.
    assert summary["bare_tokens_per_s"] > 0
    assert summary["trial_tokens_per_s"] > 0
    assert summary["ratio"] > 0
    assert len(summary["bare"]) == 2 and len(summary["trials"]) == 4 and len(summary["gaps"]) == 2
    assert summary["between_trials_s"]["between_s"] > 0
    assert summary["gc_frozen"]["trial_tokens_per_s"] > 0
    assert all(r["eval_loss"] == r["eval_loss"] for r in summary["trials"])  # a number, not NaN
    for text in ("tokens/s: bare loop", "ratio trial/bare", "seconds between trials", "end-of-trial evaluation"):
        assert text in out
    assert json.loads((tmp_path / "bench.json").read_text())["ratio"] == pytest.approx(summary["ratio"])

    # Every training example fills the sequence, so a step's token count is batch x seq-len.
    assert summary["train_rows"] >= summary["steps"] * summary["batch_size"]


def test_a_matching_build_is_reused(tmp_path):
    kwargs = {"seq_len": 16, "rows": 8}
    first = bench.build_assets(tmp_path, bench.TINY_MODEL, **kwargs)
    weights = tmp_path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert bench.build_assets(tmp_path, bench.TINY_MODEL, **kwargs) == first
    assert weights.stat().st_mtime_ns == stamp
    assert len((tmp_path / "data.jsonl").read_text().splitlines()) == 8
