"""W&B tracking, offline: one run per trial with only its own config and metrics, read back from the
run files; pruned and failed trials finish with their state; a dead server never breaks a sweep;
secrets never reach a run file."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.backends import get_backend
from search.sweep import load_sweep
from search.store.storage import open_storage

from tests.search.wandb_records import read_runs

pytest.importorskip("wandb")


def _sweep(write_sweep, **changes):
    path = write_sweep(**changes)
    sweep = load_sweep(path)
    get_backend("optuna")(sweep).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    runs = read_runs(sweep.output_dir / "wandb")
    return study, [r for r in runs if r.job_type == "trial"], [r for r in runs if r.job_type == "sweep"]


def test_five_trials_five_separate_runs_each_with_its_own_config_and_metrics(write_sweep):
    study, runs, sweep_runs = _sweep(write_sweep, n_trials=5, tracking={"wandb": "offline", "tags": ["t1"]})
    assert len(runs) == 5 and len({r.run_id for r in runs}) == 5
    by_name = {r.name: r for r in runs}
    for trial in study.get_trials():
        run = by_name[f"tiny-trial-{trial.number}"]
        assert run.group == "tiny"
        assert run.config == trial.user_attrs["config"]  # this trial's params only
        eval_steps = [h["_step"] for h in run.history if "eval_loss" in h]
        assert eval_steps == [2, 4]
        assert [h["eval_loss"] for h in run.history if "eval_loss" in h] == pytest.approx(
            [trial.intermediate_values[2], trial.intermediate_values[4]])
        assert any("train_loss" in h and "learning_rate" in h for h in run.history)
        assert run.summary["state"] == "complete" and run.summary["eval_loss"] == pytest.approx(trial.value)
        assert run.exit_code == 0 and set(run.tags) == {"t1", "complete"}
    (sweep_run,) = sweep_runs
    assert sweep_run.summary["best_value"] == pytest.approx(study.best_value)
    assert any(name.endswith("best-config") for name in sweep_run.artifacts)


def test_pruned_and_failed_trials_finish_with_their_state(write_sweep):
    space = {"params": {"learning_rate": {"type": "categorical", "choices": [3e-3, 1e38, 1e-2, 2e-2]}}}
    study, runs, _ = _sweep(write_sweep, n_trials=4, space=space, sampler="grid", tracking={"wandb": "offline"},
                            pruner={"name": "percentile", "args": {"percentile": 10.0, "n_startup_trials": 1}},
                            budget={"max_steps": 6, "eval_every": 2})
    by_name = {r.name: r for r in runs}
    states = set()
    for trial in study.get_trials():
        run = by_name[f"tiny-trial-{trial.number}"]
        if trial.state == TrialState.FAIL:
            assert run.exit_code != 0 and run.summary["state"] == "failed"
            assert run.summary["fail_reason"].startswith("TrialDiverged")
        elif trial.state == TrialState.PRUNED:
            assert run.exit_code == 0 and run.summary["state"] == "pruned" and "pruned" in run.tags
        states.add(trial.state)
    assert {TrialState.FAIL, TrialState.PRUNED} <= states


def test_unreachable_server_in_online_mode_falls_back_and_the_sweep_completes(write_sweep, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    started = time.monotonic()
    study, runs, _ = _sweep(write_sweep, n_trials=2, tracking={"wandb": "online", "connect_timeout_s": 1.0})
    assert time.monotonic() - started < 120  # a hang detector, not a speed target
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert len(runs) == 2  # kept offline instead


def test_auto_without_credentials_logs_offline(write_sweep, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(Path(write_sweep().parent)))  # no ~/.netrc
    _, runs, _ = _sweep(write_sweep, n_trials=1, tracking={"wandb": "auto"})
    assert len(runs) == 1


def test_a_broken_wandb_never_breaks_the_sweep(write_sweep, monkeypatch):
    import wandb

    def explode(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", explode)
    study, runs, _ = _sweep(write_sweep, n_trials=2, tracking={"wandb": "offline"})
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert runs == []


def test_secrets_never_reach_run_files(write_sweep, monkeypatch, tmp_path):
    key = "wandbkeySENTINEL0123456789012345678901234"
    password = "pwSENTINEL42"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    # As if the storage password had been typed on the command line.
    monkeypatch.setattr(sys, "argv", ["ftsweep", "launch", "--set", f"storage=postgresql://u:{password}@db/x"])
    _, runs, sweep_runs = _sweep(write_sweep, n_trials=2, tracking={"wandb": "online", "connect_timeout_s": 1.0})
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert runs and files
    for path in files:
        data = path.read_bytes()
        assert key.encode() not in data and password.encode() not in data, path


def test_bare_yaml_off_means_off(write_sweep, tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text(write_sweep().read_text().replace("wandb: 'off'", "wandb: off"))
    assert "wandb: off" in path.read_text()
    assert load_sweep(path).spec.tracking.wandb == "off"
    assert load_sweep(path, ["tracking.wandb=off"]).spec.tracking.wandb == "off"


def test_report_wandb_makes_the_sweep_run_for_an_existing_study(write_sweep, tmp_path):
    from search.cli import main

    path = write_sweep(n_trials=2)  # tracking off while it ran
    sweep = load_sweep(path)
    get_backend("optuna")(sweep).run()
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out), "--wandb", "offline"]) == 0
    (run,) = read_runs(out / "wandb")
    assert run.job_type == "sweep" and run.group == "tiny"
    assert any(name.endswith("best-config") for name in run.artifacts)
    assert any(key.startswith("report/") for key in run.summary)
