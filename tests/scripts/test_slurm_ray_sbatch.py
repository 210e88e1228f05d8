"""scripts/cluster/slurm_ray.sbatch as the README submits it, on a real SLURM cluster (tests/_slurm.py): a Ray head
inside the allocation, the sweep on it, the allocation cancelled mid-sweep (as a preemption would) and submitted
again. The study ends with exactly n_trials complete, each config drawn once, and the cancelled job left no Ray
process behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.store.storage import JOURNAL, open_storage
from search.sweep import load_sweep

pytestmark = pytest.mark.slow
pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster" / "slurm_ray.sbatch"
N_TRIALS = 6
BUDGET = {"max_steps": 24, "eval_every": 4, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _ray_processes(port: int) -> list[str]:
    """Command lines of Ray processes of the head at `port` (this job's: the port is its own)."""
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if f":{port}" in line and "ray" in line and "ps -eo" not in line]


def test_slurm_ray_allocation_runs_the_sweep_and_resumes_after_cancel(slurm_cluster, write_sweep, tmp_path):
    path = write_sweep(backend="ray", n_trials=N_TRIALS, budget=BUDGET, ray={"max_concurrent_trials": 1})
    sweep = load_sweep(path)
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           # The head on loopback (services here stay there); on a cluster the script takes `hostname -I`.
           "FTSWEEP_RAY_HEAD_IP": "127.0.0.1", "FTSWEEP_RAY_PORT": str(port)}
    env.pop("RAY_ADDRESS", None)

    def submit() -> str:
        done = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--time=0:10:00",
                               f"--output={tmp_path}/ray-%j.log", f"--chdir={REPO}", str(SCRIPT), str(path)],
                              env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip().split(";")[0]

    def trials():
        if not Path(sweep.storage_url.removeprefix(JOURNAL)).exists():
            return []
        try:
            return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url)).get_trials()
        except KeyError:
            return []

    def gone(job: str) -> bool:
        return not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()

    def complete() -> int:
        return sum(t.state == TrialState.COMPLETE for t in trials())

    job = submit()
    _wait_until(lambda: complete() >= 2 or gone(job), timeout=300, what="2 trials of the first allocation")
    assert not gone(job), (tmp_path / f"ray-{job}.log").read_text()
    subprocess.run(["scancel", job], check=True, timeout=60)  # SIGTERM to the batch script, as a preemption
    _wait_until(lambda: gone(job), timeout=120, what=f"job {job} to end")
    _wait_until(lambda: not _ray_processes(port), timeout=60, what="the cancelled job's Ray to stop")
    first_log = (tmp_path / f"ray-{job}.log").read_text()
    assert "Ray head on" in first_log and f"127.0.0.1:{port}" in first_log, first_log

    again = submit()  # the same command: the sweep resumes from the study
    _wait_until(lambda: gone(again), timeout=420, what=f"job {again} to end")
    log = (tmp_path / f"ray-{again}.log").read_text()
    finished = trials()
    done = [t for t in finished if t.state == TrialState.COMPLETE]
    assert len(done) == N_TRIALS, (log, [(t.number, t.state.name) for t in finished])
    assert len({tuple(sorted(t.params.items())) for t in done}) == N_TRIALS  # no config drawn twice
    assert not [t for t in finished if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not _ray_processes(port)
