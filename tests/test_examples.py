"""examples/own-data: every layout and format example in the README runs as written (a real 2-trial sweep of
each), and its data is what scripts/build_example_data.py writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script
from search.cli import main
from search.store.storage import load_existing_study
from search.store.record import finished_count
from search.sweep import load_sweep

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO_ROOT / "examples" / "own-data").glob("*.yaml"))


def test_the_readme_shows_every_example():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(EXAMPLES) >= 7
    for path in EXAMPLES:
        assert f"examples/own-data/{path.name}" in readme, path.name


def test_the_example_data_is_what_the_builder_writes(tmp_path):
    written = load_script("build_example_data").build(tmp_path)
    shipped = REPO_ROOT / "examples" / "own-data"
    assert [p.relative_to(tmp_path) for p in written] == sorted(
        p.relative_to(shipped) for p in shipped.rglob("*") if p.suffix in (".jsonl", ".csv"))
    for path in written:
        assert path.read_bytes() == (shipped / path.relative_to(tmp_path)).read_bytes(), path.name


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_sweep_runs(example, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the examples' paths are relative to the repository, where the README runs them
    overrides = ["n_trials=2", "budget.max_steps=4", "budget.eval_every=2", f"output_dir={tmp_path}",
                 "tracking.wandb=off"]
    assert main(["launch", str(example.relative_to(REPO_ROOT)), *[a for o in overrides for a in ("--set", o)]]) == 0
    sweep = load_sweep(example.relative_to(REPO_ROOT), [f"output_dir={tmp_path}"])
    trials = load_existing_study(sweep.study_name, sweep.storage_url).trials
    # Two configurations under the default pruner (pausing ASHA): no failure, and at least one trained to the end.
    assert finished_count(trials) == 2 and not [t for t in trials if t.state.name in ("FAIL", "RUNNING", "WAITING")]
    assert any(t.state.name == "COMPLETE" and max(t.intermediate_values) == 4 for t in trials)
