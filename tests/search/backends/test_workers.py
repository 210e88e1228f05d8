"""Several worker processes on one study (journal file and a real PostgreSQL), lost workers, the
retry policy by failure cause, and a worker's memory over many trials. Every trial is a real tiny fine-tune."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.cli._common import resolve_study
from search.store.storage import open_storage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
QUICK = {"max_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}


@pytest.fixture(params=["journal", "postgres"])
def shared_storage(request, tmp_path) -> str:
    """A storage several processes can share: Optuna's journal file, or a fresh PostgreSQL database."""
    if request.param == "journal":
        return f"journal:///{tmp_path / 'store' / 'sweeps.journal'}"
    return request.getfixturevalue("postgres_db_url")


def _load(storage: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def _finished(trials) -> list:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_three_workers_run_exactly_n_trials(write_sweep, shared_storage, capsys):
    path = write_sweep(n_trials=12, budget=QUICK, sampler={"name": "tpe", "args": {"n_startup_trials": 4}})
    assert main(["launch", str(path), "--storage", shared_storage, "--workers", "3"]) == 0
    output = capsys.readouterr().out
    trials = _load(shared_storage).get_trials()
    assert len(_finished(trials)) == 12 and len(trials) == 12  # no overshoot, not even by a racing worker
    assert len({t.number for t in trials}) == 12
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Three worker processes ran, and their own accounts add up to the 12 trials (how many each got
    # depends on how fast each loaded the model on a busy machine).
    logs = sorted((path.parent / "runs" / "workers").glob("worker-*.log"))
    assert len(logs) == 3
    ran = [re.search(r"Worker (\S+) done: ran (\d+) trial", log.read_text()) for log in logs]
    assert all(ran), [log.read_text()[-500:] for log in logs]
    assert sum(int(m.group(2)) for m in ran) == 12
    assert {t.user_attrs["worker"] for t in trials} <= {m.group(1) for m in ran}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 12  # no two workers drew the same config
    # The launcher shows every worker's trials as they end, then the combined result.
    assert sum(f"trial {n:>3} complete" in output for n in range(12)) == 12
    assert "Done: 12 complete" in output


def test_sqlite_is_refused_for_several_workers_naming_the_alternatives(write_sweep, tmp_path, capsys):
    path = write_sweep(storage=f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}")
    assert main(["launch", str(path), "--workers", "2"]) == 2
    error = capsys.readouterr().err
    assert "SQLite takes one worker process" in error and "journal:///" in error and "postgresql://" in error
    assert not (path.parent / "runs").exists()  # refused before anything was created
    assert main(["worker", "tiny", "--storage", f"sqlite:///{path.parent / 'x.db'}"]) == 2
    assert "SQLite takes one worker process" in capsys.readouterr().err


def test_one_local_worker_may_use_sqlite(write_sweep, tmp_path, capsys):
    path = write_sweep(n_trials=2, budget=QUICK, storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert main(["launch", str(path), "--workers", "1"]) == 0
    assert "Done: 2 complete" in capsys.readouterr().out


def test_the_default_storage_takes_several_workers(write_sweep, capsys):
    path = write_sweep(n_trials=4, budget=QUICK)  # no storage: the journal file in the output directory
    assert main(["launch", str(path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "Done: 4 complete" in out and ".journal" in out
    study = resolve_study(str(path))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 4
    # Two worker processes shared the journal file (which of them ran the 4 short trials is up to timing).
    assert len(list((path.parent / "runs" / "workers").glob("*.log"))) == 2


def test_a_worker_needs_a_storage_and_an_existing_study(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FTSWEEP_STORAGE", raising=False)
    assert main(["worker", "tiny"]) == 2
    assert "FTSWEEP_STORAGE" in capsys.readouterr().err
    assert main(["worker", "nope", "--storage", f"journal:///{tmp_path / 'j.log'}"]) == 2
    assert "no such study" in capsys.readouterr().err


def _spawn_worker(storage: str, log: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "FTSWEEP_STORAGE": storage, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "search.cli", "worker", "tiny"], cwd=REPO, env=environment,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait_until(predicate, *, timeout: float = 180.0, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker ended early ({proc.returncode}):\n{log.read_text() if log else ''}")
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_workers_trial_is_failed_by_its_heartbeat_and_retried(write_sweep, shared_storage, tmp_path):
    # The killed worker says it runs on another node (FTSWEEP_HOST), so the survivor cannot see its
    # process is gone: only the missing heartbeats tell, after the grace period.
    path = write_sweep(n_trials=3, budget={**QUICK, "max_steps": 60, "eval_every": 4},
                       retries={"heartbeat_interval": 1, "grace_period": 4})
    assert main(["launch", str(path), "--storage", shared_storage, "--workers", "0"]) == 0
    study = _load(shared_storage)
    first = _spawn_worker(shared_storage, tmp_path / "first.log", FTSWEEP_HOST="node-a")

    def one_done_one_running():
        trials = study.get_trials()
        running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        return done and running and max(running[0].intermediate_values) <= 40 and (done, running[0])

    try:
        done, victim = _wait_until(one_done_one_running, what="a trial mid-training", proc=first,
                                   log=tmp_path / "first.log")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    second = _spawn_worker(shared_storage, tmp_path / "second.log")
    assert second.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()

    trials = _load(shared_storage).get_trials()
    assert {t.number: t.value for t in trials if t.number in before} == before  # untouched
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["retry_cause"] == "preempted" and "no heartbeat" in retry.user_attrs["retry_reason"]
    assert len(_finished(trials)) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def _run_fault(write_sweep, objective: str, **changes):
    path = write_sweep(objective=f"tests.search.fault_objectives:{objective}", n_trials=1, **changes)
    assert main(["launch", str(path)]) == 0
    from search.sweep import load_sweep

    return _load(load_sweep(path).storage_url).get_trials()


def test_out_of_memory_retries_with_half_the_batch_and_twice_the_accumulation(write_sweep, tmp_path, capsys):
    trials = _run_fault(write_sweep, "OutOfMemoryAboveBatch2", budget={**QUICK, "batch_size": 8})
    capsys.readouterr()
    assert main(["show", str(tmp_path / "sweep.yaml"), "1"]) == 0
    shown = capsys.readouterr().out
    assert "Retry policy (oom): retry queued with batch 2 × accumulation 4" in shown
    assert "Retry 1 of trial 0 (oom) with batch_size=4, gradient_accumulation_steps=2" in shown
    # batch 8 does not fit, nor 4; 2 does. Each re-run keeps the effective batch of 8.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.user_attrs["failure_cause"] for t in trials[:2]] == ["oom", "oom"]
    assert "OutOfMemoryError" in trials[0].user_attrs["fail_reason"]
    batches = [(t.user_attrs["config"].get("batch_size", 8), t.user_attrs["config"].get("gradient_accumulation_steps", 1))
               for t in trials]
    assert batches == [(8, 1), (4, 2), (2, 4)]
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, 0, 1]
    assert trials[2].params == trials[0].params  # the same searched config, only the batch split changed


def test_out_of_memory_at_batch_one_fails_for_good(write_sweep):
    trials = _run_fault(write_sweep, "OutOfMemoryAboveBatch2", budget={**QUICK, "batch_size": 3},
                        space={"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3},
                                          "batch_size": {"type": "fixed", "value": 3}}})
    assert [t.user_attrs["config"]["batch_size"] for t in trials] == [3, 1]  # 3 → 1 (then it fits)
    assert trials[-1].state == TrialState.COMPLETE


def test_a_nan_loss_fails_without_retry(write_sweep):
    trials = _run_fault(write_sweep, "NaNLoss", budget=QUICK)
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["failure_cause"] == "diverged"
    assert "nan" in trials[0].user_attrs["fail_reason"].lower()
    assert "would diverge again" in trials[0].user_attrs["retry"]


def test_an_exception_fails_with_its_message_and_is_retried_only_when_configured(write_sweep, tmp_path):
    trials = _run_fault(write_sweep, "RaisesValueError", budget=QUICK)
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"] == "ValueError: injected failure: the collator met an unknown column 'foo'"
    assert trials[0].user_attrs["failure_cause"] == "error"

    (tmp_path / "runs").rename(tmp_path / "first-runs")
    retried = _run_fault(write_sweep, "RaisesValueError", budget=QUICK,
                         retries={"retry_errors": True, "max_retries": 2})
    assert [t.state for t in retried] == [TrialState.FAIL] * 3  # the first run and two retries
    assert [t.user_attrs.get("attempt") for t in retried] == [None, 1, 2]
    assert "max_retries: 2" in retried[-1].user_attrs["retry"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_a_workers_resident_memory_stays_flat_over_30_trials(write_sweep):
    from search.backends import get_backend
    from search.sweep import load_sweep

    path = write_sweep(n_trials=30, budget=QUICK, pruner={"name": "median", "args": {"n_startup_trials": 2}})
    rss: list[float] = []

    def listener(event, details):
        if event == "trial_end":
            rss.append(_rss_mb())

    get_backend("optuna")(load_sweep(path), listener=listener).run()
    assert len(rss) == 30
    settled = rss[10:]  # after warm-up: allocator pools, tokenizer caches, Optuna's imports
    middle = sorted(settled)[len(settled) // 2]
    assert max(settled) <= 1.10 * middle and min(settled) >= 0.90 * middle, [round(x) for x in rss]


def test_a_storage_password_from_the_environment_never_shows(write_sweep, postgres_db_url, capsys, monkeypatch):
    from _postgres import PASSWORD_SENTINEL

    assert PASSWORD_SENTINEL in postgres_db_url
    monkeypatch.setenv("FTSWEEP_STORAGE", postgres_db_url)  # the sweep file names no storage
    path = write_sweep(n_trials=4, budget=QUICK)
    assert main(["launch", str(path), "--workers", "2"]) == 0
    assert main(["status", "tiny"]) == 0 and main(["best", "tiny", "--json"]) == 0
    assert main(["show", "tiny", "0"]) == 0
    captured = capsys.readouterr()
    assert "Done: 4 complete" in captured.out and "***" in captured.out  # the URL is shown, masked
    assert PASSWORD_SENTINEL not in captured.out + captured.err
    written = [p for p in (path.parent / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "worker-0.log" for p in written)
    for file in written:
        assert PASSWORD_SENTINEL.encode() not in file.read_bytes(), file
    study = _load(postgres_db_url)
    attrs = [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
    attrs += [a for t in study.get_trials() for a in (t.user_attrs, t.system_attrs)]
    assert PASSWORD_SENTINEL not in repr(attrs)


def test_ctrl_c_on_the_launcher_stops_its_workers_and_the_sweep_resumes(write_sweep, tmp_path):
    storage = f"journal:///{tmp_path / 'store' / 's.journal'}"
    path = write_sweep(n_trials=4, budget={**QUICK, "max_steps": 60, "eval_every": 4})
    log = tmp_path / "launch.log"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "launch", str(path), "--storage", storage, "--workers", "2"],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def training():
        try:
            trials = _load(storage).get_trials()
        except Exception:  # the study is not created yet
            return False
        return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)

    _wait_until(training, what="a worker training", proc=launcher, log=log)
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=120) == 130, log.read_text()
    assert "Run the same command again to resume" in log.read_text()
    trials = _load(storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # every worker recorded its trial
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped and all(t.user_attrs["failure_cause"] == "interrupted" for t in stopped)
    # Shorter trials to finish quickly: a budget change, recorded as a sweep revision.
    assert main(["launch", str(path), "--storage", storage, "--set", "budget.max_steps=4", "--accept-changes"]) == 0
    trials = _load(storage).get_trials()
    assert len(_finished(trials)) == 4
    for t in stopped:  # each interrupted trial ran again with the same params
        assert any(r.user_attrs.get("retry_of") == t.number and r.params == t.params for r in _finished(trials))


def test_workers_stop_at_the_sweeps_timeout(write_sweep, tmp_path):
    storage = f"journal:///{tmp_path / 'store' / 's.journal'}"
    path = write_sweep(n_trials=None, timeout=20, budget=QUICK)
    started = time.monotonic()
    assert main(["launch", str(path), "--storage", storage, "--workers", "2"]) == 0
    trials = _load(storage).get_trials()
    assert trials and all(t.state == TrialState.COMPLETE for t in trials)  # none left running or waiting
    deadline = _load(storage).user_attrs["deadline"]
    # No trial started after the deadline the launch set (each started one finishes its budget).
    assert all(t.datetime_start.timestamp() <= deadline for t in trials), ([t.datetime_start.timestamp() for t in trials], deadline)
    assert time.monotonic() - started < 120
