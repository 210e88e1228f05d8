"""scripts/bench_pruning.py on a tiny budget: reference, every strategy, table and PNG (not timed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import load_script

pytestmark = pytest.mark.slow

NUMBER = r"\d+\.\d"


bench = load_script("bench_pruning")


def test_quick_run_has_a_time_to_target_for_every_strategy_and_writes_the_png(tmp_path, capsys):
    cache, png = tmp_path / "reference.json", tmp_path / "anytime.png"
    summary = bench.main(["--quick", "--cache", str(cache), "--png", str(png)])
    out = capsys.readouterr().out

    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| strategy"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    labels = {bench.STRATEGIES[name][2] for name in bench.DEFAULT_STRATEGIES}
    assert set(rows) == labels
    for label, cells in rows.items():
        assert re.fullmatch(NUMBER, cells[0]), (label, cells)  # median time-to-target
        assert re.fullmatch(f"{NUMBER}–{NUMBER}", cells[1]), (label, cells)  # IQR
        assert cells[2] == "1/1", (label, cells)
    assert set(summary["time_to_target"]) == set(bench.DEFAULT_STRATEGIES)
    assert "ftsweep-default/hf" in summary["ratios"] and "ftsweep-sha/ftsweep-tpe" in summary["ratios"]
    assert "time-to-target, ftsweep defaults / HF defaults" in out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"

    # The reference is cached under its key and reused by the next run with the same settings.
    cached = json.loads(cache.read_text())
    assert cached["best"] == summary["reference"]["best"] and len(cached["values"]) == 3
    assert bench.reference(_args(cache), *_quick_budget(), say=lambda text: None)["key"] == cached["key"]


def test_ray_asha_runs_through_the_ray_backend(tmp_path, capsys):
    pytest.importorskip("ray")
    summary = bench.main(["--quick", "--strategies", "ray-asha", "--cache", str(tmp_path / "reference.json"),
                          "--png", str(tmp_path / "anytime.png")])
    (run,) = summary["runs"]["ray-asha"]
    assert len(run["trials"]) == 3 and summary["time_to_target"]["ray-asha"][0] > 0
    assert "ftsweep Ray backend: TPE + ASHA" in capsys.readouterr().out


def test_a_changed_setting_makes_a_new_reference(tmp_path, monkeypatch):
    cache = tmp_path / "reference.json"
    cache.write_text(json.dumps({"key": "stale", "best": 0.0}))
    calls = []
    monkeypatch.setattr(bench.common, "run_side", lambda config: calls.append(config) or _fake_result())
    record = bench.reference(_args(cache), *_quick_budget(), say=lambda text: None)
    assert len(calls) == 1 and calls[0]["pruner"] == {"name": "none"} and calls[0]["n_trials"] == 3
    assert record["best"] == 0.5 and json.loads(cache.read_text())["key"] == record["key"] != "stale"


def test_time_to_target_counts_completed_trials_only():
    result = _fake_result()
    assert bench.common.time_to_target(result, 0.55) == 3.0  # the pruned trial at 0.4 does not count
    assert bench.common.time_to_target(result, 0.1) == float("inf")
    assert bench.common.anytime_curve(result) == [(2.0, 0.9), (3.0, 0.5)]
    assert bench.early_survival([{"10": 1.0, "20": 0.5}, {"10": 2.0, "20": 0.6}, {"10": 3.0, "20": 0.9}], 0.6) == {
        10: (2, 2, 1)}


def _args(cache: Path):
    import argparse

    return argparse.Namespace(reference_trials=3, reference_seed=1000, cache=cache)


def _quick_budget():
    return bench.common.QUICK_BUDGET, bench.common.QUICK_DATASET


def _fake_result() -> dict:
    trials = [
        {"number": 0, "state": "complete", "value": 0.9, "start": 1.0, "end": 2.0, "params": {}, "curve": {"2": 0.9}},
        {"number": 1, "state": "pruned", "value": 0.4, "start": 2.0, "end": 2.5, "params": {}, "curve": {"2": 0.4}},
        {"number": 2, "state": "complete", "value": 0.5, "start": 2.5, "end": 3.0, "params": {}, "curve": {"2": 0.5}},
    ]
    return {"trials": trials, "sweep_end": 3.1, "train_s": 1.0, "eval_s": 0.5, "train_steps": 8, "peak_rss_mb": 1.0}
