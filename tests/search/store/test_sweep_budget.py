"""budget.sweep (search/store/sweep_budget.py): hours, gpu_hours and trial_steps stop a real sweep of the tiny model,
alone, with a pausing scheduler and in a timeout-only sweep; `launch --dry-run` says what the budget buys."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from search.backends import get_backend
from search.cli import main
from search.store.pausing import paused_trials
from search.store.record import STUDY_DEADLINE
from search.store.storage import open_storage
from search.store.sweep_budget import trained_steps
from search.sweep import load_sweep


def _run(path):
    sweep = load_sweep(path)
    notes = []
    get_backend("optuna")(sweep, listener=lambda e, d: notes.append(d["text"]) if e == "note" else None).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    return study, notes


def test_trial_steps_stop_the_sweep_once_spent(write_sweep):
    study, notes = _run(write_sweep(n_trials=20, budget={"sweep": {"trial_steps": 10}}))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3  # 4 + 4 = 8 < 10: a third starts, then 12 >= 10
    assert sum(trained_steps(t) for t in study.get_trials()) == 12
    assert any("budget.sweep.trial_steps 10 spent (12 steps trained)" in note for note in notes)


def test_a_spent_budget_ends_paused_trials_and_counts_only_new_steps(write_sweep):
    path = write_sweep(n_trials=30, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}},
                       budget={"max_steps": 8, "eval_every": 2, "sweep": {"trial_steps": 40}})
    study, notes = _run(path)
    trials = study.get_trials()
    steps = sum(trained_steps(t) for t in trials)
    assert 40 <= steps < 40 + 8  # the last trial to start finishes; a resume pays only its new steps
    new = [t for t in trials if t.state != TrialState.WAITING and "retry_of" not in t.user_attrs]
    assert len(new) < 30 and not paused_trials(study)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("slot") for t in trials if t.state == TrialState.WAITING)  # unused places stay queued
    assert any("trial_steps 40 spent" in note for note in notes)


def test_gpu_hours_and_hours(write_sweep):
    study, notes = _run(write_sweep(n_trials=20, budget={"sweep": {"gpu_hours": 1e-6}}))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1 and any("gpu_hours" in n for n in notes)
    before = time.time()
    study, _ = _run(write_sweep(n_trials=1, timeout=3600, budget={"sweep": {"hours": 0.5}}))
    assert before + 1800 <= study.user_attrs[STUDY_DEADLINE] <= time.time() + 1800  # the earlier of the two
    study, _ = _run(write_sweep(n_trials=None, timeout=600, budget={"sweep": {"trial_steps": 8}}))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2  # a timeout-only sweep stops too


def test_dry_run_says_what_the_budget_buys(write_sweep, capsys):
    path = write_sweep(n_trials=27, pruner={"name": "asha_promote"},
                       budget={"max_steps": 45, "eval_every": 5, "sweep": {"trial_steps": 300}})
    assert main(["launch", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rungs at steps 5, 15 of 45" in out and "27.0 configuration(s) reach step 5" in out
    assert "3.0 configuration(s) reach step 45" in out and "≈ 315 steps in all" in out
    assert "trial_steps 300: stops the sweep after ≈ 26 of 27 configurations" in out
