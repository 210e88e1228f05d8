"""`ftsweep submit` on a real SLURM cluster (scripts/cluster/start_slurm.sh: munged, slurmctld, slurmd on
this machine) and a real PostgreSQL: a job array of 2 `ftsweep worker`s runs a tiny sweep to exactly
n_trials, also when one array task is cancelled (scancel), a worker is killed (kill -9) or a task is
requeued (scontrol requeue) mid-trial. Each fault's recovery time, from the fault to the victim trial's
re-run finishing, is printed (`pytest -s` shows it).
"""

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

from _postgres import PASSWORD_SENTINEL
from search.store.storage import open_storage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
N_TRIALS = 6
# Each trial a few seconds on 2 cores: long enough to be hit mid-training, short enough for 4 sweeps in minutes.
BUDGET = {"max_steps": 24, "eval_every": 4, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}
RETRIES = {"heartbeat_interval": 1, "grace_period": 4}
DEADLINE_S = 150  # one sweep, faults included; they take under a minute and a half here


def _wait_until(predicate, *, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=True).stdout


class Sweep:
    """A tiny sweep submitted with `ftsweep submit --array 2` on the cluster and a fresh database."""

    def __init__(self, write_sweep, url: str):
        self.url = url
        self.path = write_sweep(n_trials=N_TRIALS, budget=BUDGET, retries=RETRIES)
        self.env = {**os.environ, "FTSWEEP_STORAGE": url, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-m", "search.cli", "submit", str(self.path), "--array", "2",
                               "--cpus-per-worker", "1", "--time", "0:10:00"], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        self.submit_output = done.stdout + done.stderr
        self.job = re.search(r"Submitted job (\d+)", done.stdout).group(1)
        self.study = optuna.load_study(study_name="tiny", storage=open_storage(url))
        self.logs = self.path.parent / "runs" / "slurm"

    def trials(self):
        return self.study.get_trials(deepcopy=False)

    def log(self, task: int) -> str:
        path = self.logs / f"tiny-{self.job}_{task}.log"
        return path.read_text() if path.exists() else ""

    def job_states(self) -> dict[str, str]:
        """Array task id -> SLURM state, for the tasks still known to squeue."""
        lines = _slurm("squeue", "-h", "-j", self.job, "-o", "%i %T").split()
        return dict(zip(lines[::2], lines[1::2]))

    def running_victim(self):
        """A trial mid-training (some evaluations, far from its end) and the pid of its worker, or None."""
        for trial in self.trials():
            if trial.state == TrialState.RUNNING and trial.intermediate_values \
                    and max(trial.intermediate_values) <= BUDGET["max_steps"] // 2:
                host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
                if pid.isdigit():
                    return trial, int(pid)
        return None

    def array_task_of(self, pid: int) -> str:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        variables = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        return variables["SLURM_ARRAY_TASK_ID"]

    def recovery(self, victim, fault_at: float) -> float:
        """Seconds from the fault to the victim trial's re-run (same params, cause `preempted`) finishing."""
        def rerun_done():
            for trial in self.trials():
                if trial.user_attrs.get("retry_of") == victim.number and trial.state == TrialState.COMPLETE:
                    return trial
        rerun = _wait_until(rerun_done, timeout=DEADLINE_S, what=f"the re-run of trial {victim.number}")
        assert rerun.params == victim.params and rerun.user_attrs["retry_cause"] == "preempted", rerun.user_attrs
        return rerun.datetime_complete.timestamp() - fault_at

    def wait_finished(self):
        """Until every array task has left the queue; then the study holds exactly N_TRIALS finished trials."""
        _wait_until(lambda: not self.job_states(), timeout=DEADLINE_S, what=f"job {self.job} to end", poll=1)
        trials = self.trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == N_TRIALS, [(t.number, t.state.name, t.user_attrs) for t in trials]
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        # Each trial ran to its end once: no two finished trials share a config, and a failed one was
        # re-run exactly once (its retry finished), never twice.
        assert len({tuple(sorted(t.params.items())) for t in complete}) == N_TRIALS
        failed = [t for t in trials if t.state == TrialState.FAIL]
        for dead in failed:
            reruns = [t for t in complete if t.user_attrs.get("retry_of") == dead.number]
            assert len(reruns) == 1 and reruns[0].params == dead.params, (dead.number, dead.user_attrs)
        for task in (0, 1):
            assert PASSWORD_SENTINEL not in self.log(task)
        return complete, failed


@pytest.fixture
def sweep(slurm_cluster, postgres_db_url, write_sweep):
    submitted = Sweep(write_sweep, postgres_db_url)
    yield submitted
    subprocess.run(["scancel", submitted.job], capture_output=True, timeout=60, check=False)


def test_submit_runs_a_sweep_as_a_job_array_to_exactly_n_trials(sweep):
    out = sweep.submit_output
    assert f"squeue -j {sweep.job}" in out and "ftsweep status tiny" in out and "2 worker(s)" in out
    assert PASSWORD_SENTINEL not in out
    script = (sweep.logs / "workers.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --gpus" not in script and PASSWORD_SENTINEL not in script
    # Mid-sweep, the password is in no command line, nor in what squeue or scontrol show of the job.
    _wait_until(lambda: any(t.state == TrialState.RUNNING for t in sweep.trials()), timeout=DEADLINE_S,
                what="a running trial")
    shown = _slurm("squeue", "-j", sweep.job, "-o", "%all") + _slurm("scontrol", "show", "job", sweep.job)
    commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "tiny" in shown and PASSWORD_SENTINEL not in shown and PASSWORD_SENTINEL not in commands
    complete, failed = sweep.wait_finished()
    assert not failed
    ran = [re.search(r"done: ran (\d+) trial", sweep.log(task)) for task in (0, 1)]
    assert all(ran), [sweep.log(task)[-800:] for task in (0, 1)]
    assert sum(int(m.group(1)) for m in ran) == N_TRIALS  # both workers' own accounts add up


def test_scancel_of_an_array_task_mid_trial(sweep):
    victim, pid = _wait_until(sweep.running_victim, timeout=DEADLINE_S, what="a trial mid-training")
    task = sweep.array_task_of(pid)
    fault_at = time.time()
    _slurm("scancel", f"{sweep.job}_{task}")
    seconds = sweep.recovery(victim, fault_at)
    complete, failed = sweep.wait_finished()
    assert [t.number for t in failed] == [victim.number]
    assert "Preempted (SIGTERM)" in sweep.log(int(task))
    print(f"\nrecovery after scancel of array task {task}: {seconds:.1f} s (trial {victim.number})")


def test_kill_9_of_a_worker_mid_trial(sweep):
    victim, pid = _wait_until(sweep.running_victim, timeout=DEADLINE_S, what="a trial mid-training")
    fault_at = time.time()
    os.kill(pid, signal.SIGKILL)
    seconds = sweep.recovery(victim, fault_at)
    complete, failed = sweep.wait_finished()
    assert [t.number for t in failed] == [victim.number]
    print(f"\nrecovery after kill -9 of worker {pid}: {seconds:.1f} s (trial {victim.number})")


def test_scontrol_requeue_of_an_array_task_mid_trial(sweep):
    victim, pid = _wait_until(sweep.running_victim, timeout=DEADLINE_S, what="a trial mid-training")
    task = sweep.array_task_of(pid)
    fault_at = time.time()
    _slurm("scontrol", "requeue", f"{sweep.job}_{task}")
    seconds = sweep.recovery(victim, fault_at)
    complete, failed = sweep.wait_finished()
    assert [t.number for t in failed] == [victim.number]
    # The requeued task ran again into the same log: both attempts are in it, the first one's preemption too.
    log = sweep.log(int(task))
    assert "attempt 1 " in log and "attempt 2 " in log and "Preempted (SIGTERM)" in log, log[-2000:]
    assert log.index("attempt 1 ") < log.index("Preempted (SIGTERM)") < log.index("attempt 2 ")
    print(f"\nrecovery after scontrol requeue of array task {task}: {seconds:.1f} s (trial {victim.number})")
