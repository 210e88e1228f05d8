"""A relaunch is checked against the sweep its study recorded (search/store/relaunch.py), as a user runs it."""

from __future__ import annotations

import json

import optuna
import yaml

from search.cli import main
from search.store.record import STUDY_SPACE, STUDY_SWEEP, record_sweep
from search.store.relaunch import REVISION, STUDY_REVISIONS, STUDY_SPACE_REVISIONS
from search.store.storage import open_storage, study_file_of
from search.sweep import load_sweep, sweep_from_study


def _study(path) -> optuna.Study:
    sweep = load_sweep(path)
    return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def test_a_changed_budget_is_refused_and_leaves_the_study_as_it_was(write_sweep, capsys):
    path = write_sweep(n_trials=1)
    assert main(["launch", str(path)]) == 0
    before = _study(path)
    recorded, trials = before.user_attrs[STUDY_SWEEP], len(before.trials)
    capsys.readouterr()

    assert main(["launch", str(path), "--set", "budget.max_steps=2", "--set", "n_trials=2"]) == 2
    err = capsys.readouterr().err
    assert "budget.max_steps: 4 → 2" in err and "n_trials" not in err.split("Fix:")[0]
    assert "--set study_name=NEW" in err and "--accept-changes" in err
    after = _study(path)
    assert len(after.trials) == trials and after.user_attrs[STUDY_SWEEP] == recorded
    assert STUDY_REVISIONS not in after.user_attrs


def test_dry_run_refuses_a_changed_relaunch_as_the_launch_does_and_writes_nothing(write_sweep, capsys):
    path = write_sweep(n_trials=1)
    assert main(["launch", str(path)]) == 0
    recorded = _study(path).user_attrs[STUDY_SWEEP]
    capsys.readouterr()

    assert main(["launch", str(path), "--dry-run", "--set", "budget.max_steps=2"]) == 2
    assert "budget.max_steps: 4 → 2" in capsys.readouterr().err
    assert main(["launch", str(path), "--dry-run", "--set", "budget.max_steps=2", "--accept-changes"]) == 0
    assert "Sweep revision 1 would be recorded (budget.max_steps: 4 → 2)" in capsys.readouterr().out
    after = _study(path)
    assert after.user_attrs[STUDY_SWEEP] == recorded and STUDY_REVISIONS not in after.user_attrs


def test_dry_run_of_a_new_study_creates_no_storage_file(write_sweep):
    path = write_sweep(n_trials=1)
    sweep = load_sweep(path)
    assert main(["launch", str(path), "--dry-run"]) == 0
    assert not study_file_of(sweep.storage_url).exists()


def test_accepted_changes_make_a_revision_that_best_and_export_rank_alone(write_sweep, tmp_path, capsys):
    path = write_sweep(n_trials=1)
    assert main(["launch", str(path)]) == 0
    capsys.readouterr()

    assert main(["launch", str(path), "--set", "budget.max_steps=2", "--set", "n_trials=2", "--accept-changes"]) == 0
    out = capsys.readouterr().out
    assert "Sweep revision 1 recorded (budget.max_steps: 4 → 2)" in out
    study = _study(path)
    [revision] = study.user_attrs[STUDY_REVISIONS]
    assert revision["revision"] == 1 and revision["at"]
    assert revision["changes"] == [{"key": "budget.max_steps", "was": 4, "now": 2}]
    assert [t.user_attrs[REVISION] for t in study.trials] == [0, 1]

    assert main(["best", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert [row["number"] for row in json.loads(captured.out)] == [1]
    assert "1 completed trial(s) of earlier sweep revisions left out" in captured.err
    assert main(["export", str(path), "--out", str(tmp_path / "best")]) == 0
    best = yaml.safe_load((tmp_path / "best" / "winner.yaml").read_text())
    assert best["provenance"]["trial"] == 1 and best["budget"]["max_steps"] == 2
    # An older trial is still exported as it ran: with the budget of its own revision.
    assert main(["export", str(path), "--trial", "0", "--out", str(tmp_path / "old")]) == 0
    assert yaml.safe_load((tmp_path / "old" / "winner.yaml").read_text())["budget"]["max_steps"] == 4

    # A worker rebuilds the sweep from the study: the latest revision, nothing to refuse or record.
    rebuilt = sweep_from_study(study, load_sweep(path).storage_url)
    assert record_sweep(study, rebuilt) == []
    assert len(_study(path).user_attrs[STUDY_REVISIONS]) == 1


def test_a_relaunch_with_more_trials_resumes_silently(write_sweep, capsys):
    path = write_sweep(n_trials=1)
    assert main(["launch", str(path)]) == 0
    capsys.readouterr()
    assert main(["launch", str(path), "--set", "n_trials=2", "--set", "sampler.name=tpe"]) == 0
    out = capsys.readouterr().out
    assert "Resuming study tiny: 1 trial(s) already finished" in out
    assert "revision" not in out and "search space changed" not in out
    study = _study(path)
    assert len(study.trials) == 2
    assert STUDY_REVISIONS not in study.user_attrs and STUDY_SPACE_REVISIONS not in study.user_attrs


def test_a_changed_space_is_reported_recorded_and_ranked_with_the_rest(write_sweep, capsys):
    path = write_sweep(n_trials=1)
    assert main(["launch", str(path)]) == 0
    old_space = _study(path).user_attrs[STUDY_SPACE]
    capsys.readouterr()

    assert main(["launch", str(path), "--set", "space.override.learning_rate.high=0.001"]) == 0
    out = capsys.readouterr().out
    assert "The search space changed" in out and "space.params.learning_rate.high: 0.03 → 0.001" in out
    study = _study(path)
    [moved] = study.user_attrs[STUDY_SPACE_REVISIONS]
    assert {"key": "space.params.learning_rate.high", "was": 0.03, "now": 0.001} in moved["changes"]
    assert moved["previous_space"] == old_space and moved["revision"] == 0
    assert study.user_attrs[STUDY_SPACE]["params"]["learning_rate"]["high"] == 0.001
    assert STUDY_REVISIONS not in study.user_attrs  # a space change keeps trials comparable
    assert main(["best", str(path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
