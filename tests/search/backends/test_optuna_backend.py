"""The Optuna backend on real studies of real (tiny) fine-tunes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from objectives.engine.checkpoint import checkpoint_state, latest_checkpoint
from search.backends import get_backend
from search.cli import main
from search.store.storage import JOURNAL, open_storage
from search.sweep import load_sweep
from spaces import list_presets

REPO = Path(__file__).resolve().parents[3]


def _run(path: Path, *overrides: str) -> optuna.Study:
    sweep = load_sweep(path, list(overrides))
    get_backend("optuna")(sweep).run()
    return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def test_every_trial_is_recorded_with_params_curve_metrics_and_duration(write_sweep):
    study = _run(write_sweep(n_trials=3))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert sorted(t.intermediate_values) == [2, 4]
        assert t.value == pytest.approx(t.user_attrs["metrics"]["eval_loss"])
        assert t.value == pytest.approx(t.intermediate_values[4])
        assert t.user_attrs["duration_s"] > 0
        config = t.user_attrs["config"]
        assert set(t.params) <= set(config)
        assert config["lora_alpha"] == 2 * config["lora_r"]  # lora-quick's derived parameter
        assert [h["step"] for h in t.user_attrs["eval_history"]] == [2, 4]
    assert study.user_attrs["sweep"]["name"] == "tiny"
    assert len({t.value for t in trials}) == 3  # different params, different outcomes


def test_aggressive_pruner_prunes(write_sweep):
    path = write_sweep(n_trials=6, pruner={"name": "percentile", "args": {"percentile": 10.0, "n_startup_trials": 1}},
                       budget={"max_steps": 6, "eval_every": 2})
    study = _run(path)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.PRUNED) >= 1, states
    assert len(states) == 6
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert max(t.intermediate_values) < 6  # stopped before the end of its budget


def test_failing_trials_are_recorded_and_the_sweep_goes_on(write_sweep):
    space = {"params": {
        # At lr 1e38 the first Adam step pushes activations past float32 range: inf, then NaN.
        "learning_rate": {"type": "categorical", "choices": [1e-3, 1e38]},
        "target_modules": {"type": "categorical", "choices": ["attention_qv", "all_linear"]},
    }}
    study = _run(write_sweep(space=space, sampler="grid", n_trials=4))
    trials = study.get_trials()
    assert len(trials) == 4
    by_params = {(t.params["learning_rate"], t.params["target_modules"]): t for t in trials}
    for modules in ("attention_qv", "all_linear"):
        assert by_params[(1e-3, modules)].state == TrialState.COMPLETE
        diverged = by_params[(1e38, modules)]
        assert diverged.state == TrialState.FAIL
        assert diverged.user_attrs["fail_reason"].startswith("TrialDiverged")
    # (A target module the model lacks is refused before the study exists: tests/search/test_sweep_check.py.)


def test_launching_again_resumes_without_rerunning(write_sweep):
    path = write_sweep(n_trials=2)
    first = _run(path)
    values = [t.value for t in first.get_trials()]
    again = _run(path, "n_trials=3")
    trials = again.get_trials()
    assert len(trials) == 3
    assert [t.value for t in trials[:2]] == values


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_runs_through_the_backend(write_sweep, preset):
    study = _run(write_sweep(space=preset, n_trials=1, budget={"max_steps": 2, "eval_every": 2}))
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")


def _spawn(path: Path) -> subprocess.Popen:
    # Output goes to a file, not a pipe: nobody reads a pipe while we poll, and a full one would block it.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (path.parent / "launch.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "search.cli", "launch", str(path)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def _output(path: Path) -> str:
    return (path.parent / "launch.log").read_text()


def _study_created(url: str, name: str) -> bool:
    # The default storage is a journal file, which several processes may read while one writes it.
    if not Path(url.removeprefix(JOURNAL)).exists():
        return False
    return name in optuna.study.get_all_study_names(storage=open_storage(url))


def _wait_for(path: Path, predicate, proc: subprocess.Popen, timeout: float = 180.0) -> optuna.Study:
    sweep = load_sweep(path)
    assert sweep.storage_url.startswith(JOURNAL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep process ended early ({proc.returncode}):\n{_output(path)}")
        if _study_created(sweep.storage_url, sweep.study_name):
            study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
            if predicate(study.get_trials()):
                return study
        time.sleep(0.2)
    raise AssertionError("the sweep did not get there in time")


def _one_done_one_running(trials) -> bool:
    # Not late in a 60-step trial: the signal lands before that trial could finish. The window is
    # most of a trial, so a busy machine (slow polling) still sees it.
    states = [t.state for t in trials]
    steps = trials[-1].intermediate_values if trials else {}
    return TrialState.COMPLETE in states and states[-1] == TrialState.RUNNING and 0 < max(steps, default=0) <= 40


@pytest.mark.slow  # a subprocess sweep, killed or interrupted mid-trial
def test_killed_sweep_resumes_keeping_completed_trials(write_sweep, capsys):
    path = write_sweep(n_trials=3, budget={"max_steps": 60, "eval_every": 4})
    proc = _spawn(path)
    try:
        _wait_for(path, _one_done_one_running, proc)
    finally:
        proc.kill()
        proc.wait()
    # Read the state after the kill: the trial seen running may have finished in between.
    study = optuna.load_study(study_name="tiny", storage=open_storage(load_sweep(path).storage_url))
    before = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    killed = next(t.number for t in study.get_trials() if t.state == TrialState.RUNNING)
    assert main(["status", str(path), "--json"]) == 0  # status works while a trial is marked running
    assert json.loads(capsys.readouterr().out)["counts"]["running"] == 1


    resumed = _run(path)
    trials = resumed.get_trials()
    assert {t.number: t.value for t in trials if t.number in before} == before
    dead = next(t for t in trials if t.number == killed)
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("preempted")
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["retry_cause"] == "preempted" and retry.user_attrs["attempt"] == 1
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


@pytest.mark.slow  # a subprocess sweep, killed or interrupted mid-trial
def test_ctrl_c_stops_cleanly_and_keeps_completed_trials(write_sweep):
    path = write_sweep(n_trials=3, budget={"max_steps": 60, "eval_every": 4})
    proc = _spawn(path)
    _wait_for(path, _one_done_one_running, proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    output = _output(path)
    assert proc.returncode == 130, output
    assert "Run the same command again to resume" in output
    trials = optuna.load_study(study_name="tiny", storage=open_storage(load_sweep(path).storage_url)).get_trials()
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert any(t.state == TrialState.COMPLETE for t in trials)
    assert main(["launch", str(path)]) == 0
    final = optuna.load_study(study_name="tiny", storage=open_storage(load_sweep(path).storage_url)).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in final) == 3


@pytest.mark.slow  # waits out the grace period
def test_a_trial_its_process_never_stamped_is_recovered_after_a_grace_period(tmp_path):
    # A process killed between creating a trial and stamping its `worker` leaves an anonymous RUNNING
    # trial; a live process stamps within milliseconds, so after the grace period it is an orphan.
    from search.store.recovery import UNSTAMPED_GRACE_S, recover_interrupted

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    stamped_by_other_host = study.ask()
    stamped_by_other_host.set_user_attr("worker", "another-host:1")
    started = time.monotonic()
    assert recover_interrupted(study) == [orphan.number]
    assert time.monotonic() - started >= UNSTAMPED_GRACE_S - 0.5  # it waited for a possible stamp first
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL and trials[orphan.number].user_attrs["retried"]
    assert trials[stamped_by_other_host.number].state == TrialState.RUNNING  # not ours to judge
    assert trials[-1].state == TrialState.WAITING  # queued again with the same params
    assert trials[-1].system_attrs["fixed_params"] == {"x": orphan.params["x"]}


def test_a_sweep_on_the_journal_file_storage_runs_resumes_and_is_read_by_the_inspect_commands(
        write_sweep, tmp_path, capsys):
    journal = tmp_path / "store" / "sweeps.log"
    path = write_sweep(storage=f"journal:///{journal}", n_trials=2)
    assert main(["launch", str(path)]) == 0
    assert journal.exists() and not list(tmp_path.rglob("*.db"))  # the journal holds the study
    assert main(["launch", str(path), "--set", "n_trials=3"]) == 0  # resumes: one more trial
    study = optuna.load_study(study_name="tiny", storage=open_storage(f"journal:///{journal}"))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    capsys.readouterr()
    assert main(["status", "tiny", "--storage", f"journal:///{journal}", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["complete"] == 3 and status["best"]["number"] == study.best_trial.number


def test_without_a_pruner_a_trial_evaluates_only_at_its_end_unless_told(write_sweep, tmp_path):
    import yaml

    path = write_sweep(n_trials=1, pruner="none")
    data = yaml.safe_load(path.read_text())
    del data["budget"]["eval_every"]
    path.write_text(yaml.safe_dump(data))
    study = _run(path)
    assert list(study.trials[0].intermediate_values) == [4]  # nothing to prune on: one evaluation, at the end
    (tmp_path / "runs").rename(tmp_path / "first")
    curve = _run(write_sweep(n_trials=1, pruner="none"))  # TINY_SWEEP sets eval_every: 2
    assert list(curve.trials[0].intermediate_values) == [2, 4]  # an explicit eval_every is kept


def _killed_mid_trial(trials) -> bool:
    # Past the first checkpoints, well before the end of an 80-step trial (a window of most of it, so
    # a busy machine's slower polling still sees it).
    return len(trials) == 1 and trials[0].state == TrialState.RUNNING and 12 <= max(trials[0].intermediate_values,
                                                                                   default=0) <= 60


@pytest.mark.slow  # a subprocess sweep, SIGKILLed mid-trial
def test_a_killed_trial_is_rerun_from_its_checkpoint_as_if_never_interrupted(write_sweep, tmp_path):
    changes = dict(n_trials=1, budget={"max_steps": 80, "eval_every": 4, "batch_size": 4, "max_seq_length": 64},
                   retries={"checkpoint_interval_s": 0})  # a checkpoint at every evaluation of this short trial
    reference = _run(write_sweep("reference.yaml", **{**changes, "output_dir": str(tmp_path / "reference")}))
    [uninterrupted] = reference.get_trials()

    path = write_sweep(**changes)
    proc = _spawn(path)
    try:
        _wait_for(path, _killed_mid_trial, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sweep = load_sweep(path)
    checkpoints = sweep.output_dir / "checkpoints" / "tiny"
    # The newest checkpoint only (and, if the kill landed while the next was written, that incomplete one).
    assert len(list((checkpoints / "trial-0").iterdir())) <= 2
    resumed_at = checkpoint_state(latest_checkpoint(checkpoints / "trial-0"))["step"]

    study = _run(path)
    killed, retry = study.get_trials()
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["retry_of"] == 0 and retry.params == uninterrupted.params
    history = retry.user_attrs["eval_history"]
    assert [h["step"] for h in history] == [h["step"] for h in uninterrupted.user_attrs["eval_history"]]
    assert [h.get("resumed_from") for h in history if "resumed_from" in h] == [resumed_at]
    for got, want in zip(history, uninterrupted.user_attrs["eval_history"]):
        assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5), got["step"]
    assert sorted(retry.intermediate_values) == sorted(uninterrupted.intermediate_values)  # the pruner saw it all
    assert retry.value == pytest.approx(uninterrupted.value, rel=1e-5)
    assert not any(checkpoints.iterdir())  # removed once the trial ended for good
