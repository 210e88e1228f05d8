"""scripts/bench_vs_hf.py on a tiny budget: every side of both scenarios runs and gets numbers (not timed)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import load_script

pytestmark = pytest.mark.slow

NUMBER = r"\d+(\.\d+)?"


bench = load_script("bench_vs_hf")


def _rows(out: str) -> dict[str, list[list[str]]]:
    """side label -> its table rows (one per scenario), cells after the label."""
    rows: dict[str, list[list[str]]] = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| side"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def test_quick_run_has_numbers_for_every_side_in_both_scenarios(tmp_path, capsys):
    summary = bench.main(["--quick", "--json", str(tmp_path / "vs_hf.json")])
    out = capsys.readouterr().out

    # Figures only: timings on a shared CPU say nothing, so nothing is asserted about their size.
    rows = _rows(out)
    assert set(rows) == {"ftsweep (defaults)", "HF hyperparameter_search", "bare loop"}
    for label, scenario_rows in rows.items():
        assert len(scenario_rows) == 2, label  # unpruned and pruned
        for cells in scenario_rows:
            assert all(re.fullmatch(NUMBER, c) for c in cells[:10]), (label, cells)
            assert re.fullmatch(r"\d+ / \d+", cells[10]), (label, cells)
    for scenario in ("unpruned", "pruned"):
        runs = summary["runs"][scenario]
        assert [len(runs[side]) for side in ("ftsweep", "hf", "bare")] == [1, 1, 1]
        for side, (run,) in runs.items():
            assert run["complete"] + run["pruned"] == 3, side
            assert run["sweep_s"] > run["startup_s"] > 0 and run["peak_rss_mb"] > 0, side
            assert run["best"] == run["best"], side  # a number, not NaN
    assert "ftsweep / hf: sweep" in out and "equal work, ftsweep / HF sweep wall" in out
    assert "per-trial overhead" in out and "CPU cores" in out
    assert json.loads((tmp_path / "vs_hf.json").read_text())["trials"] == 3


def test_variants_run_ftsweep_on_sqlite_and_with_gc_refreeze(capsys):
    summary = bench.main(["--quick", "--variants", "--scenarios", "unpruned"])
    rows = _rows(capsys.readouterr().out)
    for name in bench.VARIANTS:
        label = bench.VARIANTS[name][0]
        assert len(rows[label]) == 1 and all(re.fullmatch(NUMBER, c) for c in rows[label][0][:10]), label
        (run,) = summary["runs"]["unpruned"][name]
        assert run["complete"] == 3
    assert set(summary["runs"]) == {"unpruned"}


def test_the_same_seed_gives_every_side_the_same_configs(tmp_path):
    # Same sampler seed, same suggestion order: ftsweep and the HF recipe train the same configs and,
    # seeded alike, reach the same losses -- the premise of "equal work".
    import _bench_common as common

    config = {"n_trials": 2, "seed": 3, "budget": common.QUICK_BUDGET, "dataset": common.QUICK_DATASET,
              "pruner": {"name": "none"}}
    ftsweep = common.run_side({**config, "side": "ftsweep"})
    hf = common.run_side({**config, "side": "hf"})
    bare = common.run_side({**config, "side": "bare"})
    keys = ("lora_r", "lora_alpha_ratio", "lora_dropout", "learning_rate", "lr_scheduler_type", "warmup_ratio",
            "weight_decay")
    for f, h, b in zip(ftsweep["trials"], hf["trials"], bare["trials"]):
        params = {k: f["params"][k] for k in keys}
        assert params == {k: h["params"][k] for k in keys} == {k: b["params"][k] for k in keys}
        assert f["value"] == pytest.approx(h["value"], rel=1e-4)
    assert ftsweep["train_steps"] == hf["train_steps"] == bare["train_steps"] == 2 * common.QUICK_BUDGET["max_steps"]
