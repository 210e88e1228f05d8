"""Distributed sweeps (`resources: {devices_per_trial: G}`, Optuna backend): each trial a process group of G
processes (gloo on this CPU) that gives it the history it has in one process with the same global batch; the
worker records and logs it once; a lost rank fails the trial, which the retry policy re-runs; what cannot be
spread over processes is refused when the sweep loads."""

from __future__ import annotations

import json

import pytest

from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.store.storage import load_existing_study
from search.sweep import load_sweep
from tests.search.distributed_sweeps import BUDGET, DISTRIBUTED, SPACE



def _study(path):
    sweep = load_sweep(path)
    return load_existing_study(sweep.study_name, sweep.storage_url)


@pytest.mark.slow  # rank processes
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_distributed_sweep_gives_each_trial_its_one_process_history_and_one_wandb_run(write_sweep, tmp_path,
                                                                                        strategy):
    from tests.search.wandb_records import read_runs

    common = dict(space=SPACE, sampler={"name": "grid"}, pruner="none", n_trials=2, budget=BUDGET)
    spread = write_sweep(**common, resources={**DISTRIBUTED, "strategy": strategy}, tracking={"wandb": "offline"})
    alone = write_sweep("alone.yaml", **common, study_name="alone", output_dir=str(tmp_path / "alone"))
    assert main(["launch", str(spread)]) == 0 and main(["launch", str(alone)]) == 0
    one = {t.params["learning_rate"]: t for t in _study(alone).trials}
    trials = _study(spread).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        want = one[t.params["learning_rate"]]
        assert [h["step"] for h in t.user_attrs["eval_history"]] == [2, 4, 6]
        assert [h["eval_loss"] for h in t.user_attrs["eval_history"]] == pytest.approx(
            [h["eval_loss"] for h in want.user_attrs["eval_history"]], rel=1e-5)
        assert sorted(t.intermediate_values) == [2, 4, 6]  # the pruner heard every evaluation
        assert "2 processes per trial" in t.user_attrs["device"]
    runs = [run for run in read_runs(load_sweep(spread).output_dir / "wandb") if run.job_type == "trial"]
    assert sorted(run.name for run in runs) == ["tiny-trial-0", "tiny-trial-1"]  # once per trial, not per rank
    # export + train reproduce the best trial in one process, with the same global batch.
    assert main(["export", str(spread), "--out", str(tmp_path / "winner")]) == 0
    assert main(["train", str(tmp_path / "winner" / "winner.yaml"), "--set", f"output_dir={tmp_path / 'trained'}"]) == 0
    record = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert record["reproduction"]["comparable"] and record["reproduction"]["relative_error"] < 1e-4, record


@pytest.mark.slow  # rank processes
def test_a_lost_rank_fails_its_trial_which_is_rerun_on_a_clean_group(write_sweep):
    # (Random, not grid: the grid sampler stops the study once its points have been tried, re-runs or not.)
    path = write_sweep(objective="tests.search.fault_objectives:RankOneDiesOnce", space=SPACE,
                       sampler={"name": "random"}, pruner="none", n_trials=2, budget=BUDGET, resources=DISTRIBUTED)
    assert main(["launch", str(path)]) == 0
    trials = _study(path).trials
    lost, *others = trials
    assert lost.state.name == "FAIL" and lost.user_attrs["failure_cause"] == "preempted"
    assert "a rank of the distributed trial was lost" in lost.user_attrs["fail_reason"]
    retry = next(t for t in others if t.user_attrs.get("retry_of") == lost.number)
    assert retry.state.name == "COMPLETE" and retry.params == lost.params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


@pytest.mark.parametrize(("changes", "key", "why"), [
    ({"pack": {"slots": 2}}, "pack.slots", "a pack trains its slots in one process on one device"),
    ({"backend": "ray", "pruner": {"name": "pbt"}, "n_trials": 4}, "pruner.name",
     "PBT clones trials through Tune's checkpoints, and a trial over several devices keeps its checkpoints"),
    ({"resources": {**DISTRIBUTED, "strategy": "fsdp"},
      "model": {"name_or_path": "bundled:tiny-support-lm", "quantization": {"bits": 4}}}, "resources.strategy",
     "FSDP shards the base model's weights, and a bitsandbytes-quantized base stores them as packed integers"),
    ({"resources": {"strategy": "fsdp"}}, "resources.strategy",
     "strategy fsdp shards a trial over its processes, and devices_per_trial is 1"),
    ({"budget": {**BUDGET, "batch_size": 5}}, "budget.batch_size", "budget.batch_size 5 does not split over 2"),
])
def test_what_cannot_be_spread_over_processes_is_refused_when_the_sweep_loads(write_sweep, capsys, changes, key, why):
    path = write_sweep(**{"space": SPACE, "resources": DISTRIBUTED, **changes})
    assert main(["launch", str(path), "--dry-run"]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert f"{key}: {why}" in error, error


@pytest.mark.parametrize(("gpus", "per_trial", "why"), [
    ("0", 2, "--gpus gives 1 GPU(s), fewer than one trial takes"),
    ("0,1,2", 2, "1 trial(s) would run at once and GPU(s) 2 would stay idle"),
])
def test_gpus_that_do_not_fit_the_trials_are_refused_saying_what_would_run(write_sweep, capsys, gpus, per_trial, why):
    path = write_sweep(space=SPACE, resources={"devices_per_trial": per_trial})
    assert main(["launch", str(path), "--gpus", gpus]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert why in error, error
    assert not (path.parent / "runs").exists()  # refused before anything was created


def _launch(path, log_path, **popen):
    import subprocess
    import sys
    from pathlib import Path

    with log_path.open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "search.cli", "launch", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[3], **popen)


def _wait_for_checkpoint(checkpoints, proc, log_path, step: int, timeout: float = 240.0) -> None:
    import time

    from objectives.engine.checkpoint import checkpoint_state, latest_checkpoint

    deadline = time.monotonic() + timeout
    while latest_checkpoint(checkpoints) is None or checkpoint_state(latest_checkpoint(checkpoints))["step"] < step:
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
        time.sleep(0.2)


LONG = dict(space={"params": {**SPACE["params"], "learning_rate": {"type": "fixed", "value": 3e-3}}},
            n_trials=1, pruner="none", retries={"checkpoint_interval_s": 0},
            budget={**BUDGET, "max_steps": 60, "eval_every": 4})


@pytest.mark.slow  # a subprocess sweep, SIGKILLed mid-trial
def test_a_killed_worker_leaves_no_rank_behind_and_its_trial_resumes_from_rank_0s_checkpoint(write_sweep, tmp_path):
    import signal

    import psutil

    from objectives.engine.checkpoint import checkpoint_state, latest_checkpoint

    reference = write_sweep("reference.yaml", **LONG, output_dir=str(tmp_path / "reference"))
    assert main(["launch", str(reference)]) == 0
    [uninterrupted] = _study(reference).trials

    path = write_sweep(**LONG, resources=DISTRIBUTED)
    proc = _launch(path, tmp_path / "launch.log")
    checkpoints = load_sweep(path).output_dir / "checkpoints" / "tiny" / "trial-0"
    _wait_for_checkpoint(checkpoints, proc, tmp_path / "launch.log", step=12)
    below = psutil.Process(proc.pid).children(recursive=True)
    assert len(below) >= 3  # the forkserver and the two ranks (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(below, timeout=20)
    assert not alive, [p.cmdline() for p in alive]  # every rank died with the worker
    resumed_at = checkpoint_state(latest_checkpoint(checkpoints))["step"]

    assert main(["launch", str(path)]) == 0
    killed, retry = _study(path).trials
    assert killed.state.name == "FAIL" and retry.state.name == "COMPLETE" and retry.user_attrs["retry_of"] == 0
    history = retry.user_attrs["eval_history"]
    assert [h["resumed_from"] for h in history if "resumed_from" in h] == [resumed_at]
    assert [h["eval_loss"] for h in history] == pytest.approx(
        [h["eval_loss"] for h in uninterrupted.user_attrs["eval_history"]], rel=1e-5)


@pytest.mark.slow  # a subprocess sweep, interrupted mid-trial
def test_ctrl_c_stops_every_rank_and_the_next_launch_finishes_the_trial(write_sweep, tmp_path):
    import os
    import signal

    import psutil

    path = write_sweep(**LONG, resources=DISTRIBUTED)
    proc = _launch(path, tmp_path / "launch.log", start_new_session=True)  # its own process group, as a terminal's
    _wait_for_checkpoint(load_sweep(path).output_dir / "checkpoints" / "tiny" / "trial-0", proc,
                         tmp_path / "launch.log", step=8)
    below = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the launcher, its forkserver and the ranks all get SIGINT
    assert proc.wait(timeout=60) == 130, (tmp_path / "launch.log").read_text()[-2000:]
    gone, alive = psutil.wait_procs(below, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    interrupted, queued = _study(path).trials
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["failure_cause"] == "interrupted"
    assert queued.state.name == "WAITING"  # queued again, to go on from its checkpoint
    assert main(["launch", str(path)]) == 0
    interrupted, rerun = _study(path).trials
    assert rerun.state.name == "COMPLETE" and any("resumed_from" in h for h in rerun.user_attrs["eval_history"])


@pytest.mark.slow  # rank processes
def test_a_distributed_trial_pauses_with_every_rank_and_resumes_exactly(write_sweep, tmp_path):
    """Pausing ASHA over process groups: every rank writes the pause's checkpoint and stops (rank 0 decides), and the
    promoted trial resumes from it in a new group with the history of the trial in one process."""
    pausing = dict(space=SPACE, sampler={"name": "random"}, pruner={"name": "asha_promote", "args": {"reduction_factor": 2}},
                   n_trials=2, budget=BUDGET)
    spread = load_sweep(write_sweep(**pausing, resources=DISTRIBUTED))
    # The better learning rate first: alone at its first rung it pauses, and is promoted once the other gets there.
    spread.enqueue = [{"learning_rate": 1e-2}, {"learning_rate": 3e-3}]
    from search.backends import get_backend

    get_backend("optuna")(spread).run()
    alone = write_sweep("alone.yaml", space=SPACE, sampler={"name": "grid"}, pruner="none", n_trials=2, budget=BUDGET,
                        study_name="alone", output_dir=str(tmp_path / "alone"))
    assert main(["launch", str(alone)]) == 0
    one = {t.params["learning_rate"]: t.user_attrs["eval_history"] for t in _study(alone).trials}
    trials = load_existing_study(spread.study_name, spread.storage_url).trials
    def trained_after_resume(t) -> bool:  # a promoted continuation, not one ended without training
        history = t.user_attrs.get("eval_history", [])
        start = max((h["resumed_from"] for h in history if "resumed_from" in h), default=None)
        return t.user_attrs.get("retry_cause") == "paused" and start is not None and history[-1]["step"] > start

    resumed = [t for t in trials if trained_after_resume(t)]
    assert any(t.state.name == "COMPLETE" for t in trials)  # finished: a sweep always has a full-length trial
    assert resumed, [(t.number, t.params, t.user_attrs.get("eval_history")) for t in trials]
    for t in resumed:
        history = t.user_attrs["eval_history"]
        want = one[t.params["learning_rate"]][:len(history)]
        assert [h["step"] for h in history] == [h["step"] for h in want]
        assert [h["eval_loss"] for h in history] == pytest.approx([h["eval_loss"] for h in want], rel=1e-5)
