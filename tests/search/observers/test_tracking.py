"""W&B tracking, offline: one run per trial with only its own config and metrics, read back from the
run files; pruned and failed trials finish with their state; a dead server never breaks a sweep;
secrets never reach a run file; one sweep run per study however many workers; W&B's environment
(WANDB_MODE, WANDB_PROJECT...) counts where the sweep file is silent."""

from __future__ import annotations

import os
import subprocess
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


# ------------------------------------------------------------------ one sweep run per study, W&B's environment

QUICK = {"max_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}
REPO = Path(__file__).resolve().parents[3]


def _by_job(root: Path) -> tuple[list, list]:
    runs = read_runs(root)
    return [r for r in runs if r.job_type == "trial"], [r for r in runs if r.job_type == "sweep"]


def _spawn_worker(study_name: str, storage: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FTSWEEP_STORAGE": storage, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "search.cli", "worker", study_name], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


@pytest.mark.slow  # worker processes
def test_one_sweep_run_per_study_whatever_the_workers(write_sweep, tmp_path, monkeypatch):
    from search.cli import main
    from search.cli._common import resolve_study

    monkeypatch.setenv("WANDB_MODE", "offline")  # tracking.wandb: auto follows it
    wandb_dir = tmp_path / "runs" / "wandb"
    # Two local worker processes: the launch that prepared the study writes the sweep run once they exit.
    path = write_sweep(n_trials=3, budget=QUICK, tracking={"wandb": "auto"})
    assert main(["launch", str(path), "--workers", "2"]) == 0
    study = resolve_study(str(path))
    trial_runs, sweep_runs = _by_job(wandb_dir)
    assert sorted(r.name for r in trial_runs) == [f"tiny-trial-{n}" for n in range(3)]
    (sweep_run,) = sweep_runs
    assert sweep_run.summary["best_value"] == pytest.approx(study.best_value)  # every worker's trials
    assert sweep_run.summary["best_trial"] == study.best_trial.number
    # A relaunch resumes the study, finds it done: no second sweep run.
    folders = sorted(p.name for p in wandb_dir.glob("offline-run-*"))
    assert main(["launch", str(path), "--workers", "2"]) == 0
    assert sorted(p.name for p in wandb_dir.glob("offline-run-*")) == folders

    # A cluster: `launch --workers 0` prepares and leaves, two `ftsweep worker` processes (a SLURM array) join;
    # they end together (the idle one leaves when the other's last trial ends), and one writes the sweep run.
    other = write_sweep("other.yaml", study_name="other", n_trials=3, budget=QUICK, tracking={"wandb": "auto"})
    assert main(["launch", str(other), "--workers", "0"]) == 0
    storage = load_sweep(other).storage_url
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [_spawn_worker("other", storage, log) for log in logs]
    for worker, log in zip(workers, logs):
        assert worker.wait(timeout=600) == 0, log.read_text()[-2000:]
    other_study = resolve_study(str(other))
    assert [t.state for t in other_study.get_trials()] == [TrialState.COMPLETE] * 3
    trial_runs, sweep_runs = _by_job(wandb_dir)
    assert sorted(r.name for r in trial_runs if r.group == "other") == [f"other-trial-{n}" for n in range(3)]
    (other_run,) = [r for r in sweep_runs if r.group == "other"]
    assert other_run.summary["best_value"] == pytest.approx(other_study.best_value)
    assert len(sweep_runs) == 2 and len({r.run_id for r in sweep_runs}) == 2  # one per study


def test_a_relaunch_that_runs_more_trials_resumes_the_same_sweep_run(write_sweep):
    study, _, first = _sweep(write_sweep, n_trials=2, budget=QUICK, tracking={"wandb": "offline"})
    study, runs, both = _sweep(write_sweep, n_trials=3, budget=QUICK, tracking={"wandb": "offline"})
    assert len(runs) == 3 and len(both) == 2  # one offline folder per launch that wrote it...
    assert {r.run_id for r in both} == {first[0].run_id}  # ...of one W&B run, which `wandb sync` resumes
    latest = max(both, key=lambda r: len(r.history))
    assert latest.summary["best_value"] == pytest.approx(study.best_value)


def test_wandb_mode_disabled_writes_no_run_and_never_imports_wandb(write_sweep, tmp_path):
    path = write_sweep(n_trials=2, budget=QUICK, tracking={"wandb": "auto"})
    code = ("import sys; from search.cli import main; code = main(['launch', sys.argv[1]]); "
            "print('wandb imported:', 'wandb' in sys.modules); sys.exit(code)")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Done: 2 complete" in done.stdout and "W&B logging is off: WANDB_MODE=disabled" in done.stdout
    assert "wandb imported: False" in done.stdout
    assert not list(tmp_path.rglob("offline-run-*")) and not (tmp_path / "runs" / "wandb").exists()


def test_wandbs_environment_fills_what_the_sweep_file_leaves_unset(write_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    monkeypatch.setenv("WANDB_TAGS", "a, b")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_RUN_ID", "leaked")  # an outer run's id must not merge the trials into one run
    get_backend("optuna")(load_sweep(write_sweep(n_trials=2, budget=QUICK, tracking={"wandb": "offline"}))).run()
    runs = read_runs(tmp_path / "wandb-home" / "wandb")
    assert len(runs) == 3 and not (tmp_path / "runs" / "wandb").exists()
    assert {(r.project, r.entity, r.group) for r in runs} == {("from-env", "env-team", "env-group")}
    assert all({"a", "b"} <= set(r.tags) for r in runs)
    assert len({r.run_id for r in runs}) == 3 and "leaked" not in {r.run_id for r in runs}

    # Where the sweep file sets a value, it wins.
    tracking = {"wandb": "offline", "project": "from-file", "group": "g", "tags": ["t1"], "dir": str(tmp_path / "d")}
    get_backend("optuna")(load_sweep(write_sweep("file.yaml", study_name="file", n_trials=1, budget=QUICK,
                                                 tracking=tracking))).run()
    runs = read_runs(tmp_path / "d" / "wandb")
    assert len(runs) == 2 and {(r.project, r.group) for r in runs} == {("from-file", "g")}
    assert all("a" not in r.tags and "t1" in r.tags for r in runs)


@pytest.mark.parametrize("asked, env, mode", [
    ("off", "online", "off"),            # off always wins
    ("auto", "disabled", "off"),         # W&B's own switch
    ("offline", "disabled", "off"),
    ("online", "disabled", "off"),
    ("auto", "offline", "offline"),      # auto follows the environment
    ("auto", "dryrun", "offline"),       # W&B's old name for offline
    ("online", "offline", "offline"),    # the environment turns a mode down...
    ("offline", "online", "offline"),    # ...never up
])
def test_wandb_mode_in_the_environment(asked, env, mode, monkeypatch):
    from search.observers.tracking import choose_mode
    from search.settings import TrackingConfig

    monkeypatch.setenv("WANDB_MODE", env)
    assert choose_mode(TrackingConfig(wandb=asked))[0] == mode


def test_an_unknown_wandb_mode_is_refused_by_name(write_sweep, monkeypatch, capsys):
    from search.cli import main

    monkeypatch.setenv("WANDB_MODE", "sometimes")
    assert main(["launch", str(write_sweep(tracking={"wandb": "auto"}))]) == 2
    err = capsys.readouterr().err
    assert "WANDB_MODE" in err and "sometimes" in err and "disabled" in err
