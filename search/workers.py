"""Many worker processes on one study: the trial queue that caps a sweep at exactly n_trials, the
worker that joins a sweep from its study, and the local launcher (one process per GPU).

How n_trials holds across any number of workers, on any node:

- the launch that prepares the study (`ftsweep launch`, or `--workers 0` before a SLURM array) adds
  one WAITING trial, a *slot*, for every trial still owed: `n_trials - finished - running - waiting`;
- workers only ever pop WAITING trials (Optuna pops atomically: two workers never get the same one)
  and never create a fresh trial, so no worker can overshoot, however many race at the end;
- a failed trial that runs again (see search/retries.py) is queued as a new WAITING trial and stops
  counting, so the study still ends with n_trials finished trials;
- a worker with nothing to pop waits while other workers' trials run (one may be re-queued when its
  worker dies, after the heartbeat grace period), and leaves when the queue is empty and nothing runs.

Example (one node, four GPUs):
    ftsweep launch sweep.yaml --gpus 0,1,2,3     # the default journal file takes several workers
Example (a cluster): `ftsweep launch sweep.yaml --workers 0`, then `ftsweep worker NAME` on each
node with FTSWEEP_STORAGE=postgresql://... (scripts/cluster/slurm_workers.sbatch).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from spaces import ConfigError

from .study import finished_count, redact_url

SQLITE_ALTERNATIVES = (
    "SQLite takes one worker process: concurrent writers hit 'database is locked', and on a network "
    "filesystem (NFS) it can corrupt the study."
)
SQLITE_FIX = ("Fix: --storage journal:///runs/NAME/NAME.journal (processes on one node or a shared filesystem), "
              "or --storage postgresql://USER@HOST/DB (clusters; scripts/cluster/start_postgres.sh starts one) "
              "with the full URL in $FTSWEEP_STORAGE so its password stays out of files and `ps`.")


class NoTrialLeft(Exception):
    """The queue is empty and no running trial can come back into it: the worker's work is done."""


def refuse_sqlite(url: str, *, key: str, workers: int | str) -> None:
    """SQLite is for one worker: refuse it for several, naming what to use instead."""
    if url.startswith("sqlite"):
        raise ConfigError(SQLITE_ALTERNATIVES, key=key, value=f"{redact_url(url)} with {workers} workers",
                          hint=SQLITE_FIX)


def top_up_slots(study: optuna.Study, n_trials: int) -> int:
    """Queue a WAITING slot for each trial the study still owes; returns how many were added.
    Run by the one process that prepares the study, never by workers (two would double the slots)."""
    trials = study.get_trials(deepcopy=False)
    pending = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    missing = n_trials - finished_count(trials) - pending
    for _ in range(max(missing, 0)):
        # No params and no `fixed_params`: every sampler (grid included) samples a slot like a fresh trial.
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"slot": True}))
    return max(missing, 0)


class QueueStudy(optuna.Study):
    """A study whose `ask()` only pops queued trials (see the module docstring): `study.optimize`
    ends with `NoTrialLeft` instead of creating trial n_trials + 1.

    `waits_for_others`: while trials of other workers run, wait (polling every `poll_s`) for one of
    them to be re-queued after its worker died, instead of leaving; `deadline` (epoch s) ends the wait.
    """

    def __init__(self, *args: Any, waits_for_others: bool = True, poll_s: float = 2.0,
                 deadline: float | None = None, on_idle=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waits_for_others = waits_for_others
        self.poll_s = poll_s
        self.deadline = deadline
        self.on_idle = on_idle  # called while waiting: recover trials of dead workers on this host

    def _pop_waiting_trial_id(self) -> int | None:
        while True:
            trial_id = super()._pop_waiting_trial_id()
            if trial_id is not None:
                return trial_id
            if not self.waits_for_others or (self.deadline is not None and time.time() >= self.deadline):
                raise NoTrialLeft
            if not self._storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                raise NoTrialLeft
            time.sleep(self.poll_s)
            # Optuna's optimize loop fails stale trials only before each ask; this wait is inside one.
            if is_heartbeat_enabled(self._storage):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    fail_stale_trials(self)
            if self.on_idle is not None:
                self.on_idle(self)


def sweep_from_study(study: optuna.Study, storage_url: str):
    """Rebuild the Sweep a study was launched with (recorded by `record_sweep`), on `storage_url`."""
    from .spec import SweepSpec, _resolve

    recorded = study.user_attrs.get("sweep")
    if not recorded:
        raise ConfigError("this study was not made by `ftsweep launch` (it records no sweep)", key="study",
                          value=study.study_name, hint="Fix: create it with `ftsweep launch SWEEP --workers 0`.")
    if recorded.get("backend", "optuna") != "optuna":
        raise ConfigError("workers join Optuna-backend sweeps; Ray schedules its own trials", key="study",
                          value=study.study_name, allowed=["optuna"])
    spec = SweepSpec.model_validate({**recorded, "storage": storage_url})
    return _resolve(spec, f"study '{study.study_name}'")


# ------------------------------------------------------------------------------ local worker processes


def worker_environment(index: int, n_workers: int, gpu: str | None, storage_url: str) -> dict[str, str]:
    """The environment of local worker `index`: its GPU, a fair share of CPU threads, the storage URL
    (in the environment, not the command line, so `ps` never shows a password)."""
    env = dict(os.environ)
    env["FTSWEEP_STORAGE"] = storage_url
    env["FTSWEEP_WORKER_INDEX"] = str(index)
    env["FTSWEEP_WORKERS"] = str(n_workers)  # one local worker may use SQLite: it is the only writer
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    # N processes × all cores each would oversubscribe the CPU: give each its share unless the user chose.
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class LocalWorkers:
    """Start `ftsweep worker` processes on this node and follow the study they share.

    Example:
        >>> with LocalWorkers(sweep, gpus=["0", "1"]) as workers:  # doctest: +SKIP
        ...     workers.follow(listener)
    """

    def __init__(self, sweep, *, n_workers: int | None = None, gpus: list[str] | None = None,
                 poll_s: float = 1.0) -> None:
        self.sweep = sweep
        self.gpus = gpus
        self.n_workers = len(gpus) if gpus else int(n_workers or 1)
        self.poll_s = poll_s
        self.log_dir = sweep.output_dir / "workers"
        self.processes: list[Any] = []
        self.logs: list[Path] = []

    def __enter__(self) -> "LocalWorkers":
        import subprocess
        import sys

        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.n_workers):
            gpu = self.gpus[index] if self.gpus else None
            log = self.log_dir / f"worker-{index}.log"
            command = [sys.executable, "-m", "search.cli", "worker", self.sweep.study_name]
            with open(log, "w") as out:
                self.processes.append(subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=worker_environment(index, self.n_workers, gpu, self.sweep.storage_url)))
            self.logs.append(log)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        import signal
        import subprocess

        if exc_type is not None:  # Ctrl-C or an error here: stop the workers as Ctrl-C stops one sweep
            for process in self.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def follow(self, listener, study: optuna.Study) -> None:
        """Until every worker has exited: tell `listener` each trial that ends (any worker's)."""
        seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        while True:
            running = any(p.poll() is None for p in self.processes)
            for trial in study.get_trials(deepcopy=False):
                if trial.state.is_finished() and trial.number not in seen:
                    seen.add(trial.number)
                    listener("trial_end", {"study": study, "trial": trial})
            if not running:
                return
            time.sleep(self.poll_s)

    def failures(self) -> list[str]:
        """One line per worker that exited with an error: its exit code and the end of its log."""
        lines = []
        for index, (process, log) in enumerate(zip(self.processes, self.logs)):
            if process.returncode not in (0, None):
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                lines.append(f"worker {index} exited with {process.returncode} ({log}): {' '.join(tail)}")
        return lines
