"""Local worker processes: `ftsweep launch --workers N | --gpus 0,1` starts `ftsweep worker` processes
on this node (one per GPU) and follows the study they share (search/store/queue.py caps it at n_trials).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from spaces import ConfigError

from ..components import BACKENDS
from ..store.queue import refuse_sqlite


def worker_plan(sweep, *, workers: int | None = None, gpus: str | None = None) -> tuple[int | None, list[str] | None]:
    """(worker processes, each one's GPU ids) of a launch with `--workers` / `--gpus` (text as typed), checked
    against the sweep: the backend must take workers, GPUs must group into whole trials, storage must not be
    SQLite for several writers. (None, None): no worker processes, the sweep runs in the launching process.

    Example:
        >>> from search.sweep import load_sweep
        >>> worker_plan(load_sweep("demo"), gpus="0,1")
        (2, ['0', '1'])
    """
    gpu_groups = _gpu_groups(_gpu_list(gpus), sweep.spec.resources.devices_per_trial) if gpus is not None else None
    n_workers = len(gpu_groups) if gpu_groups else workers
    if n_workers is not None:
        _check_workers(sweep, n_workers)
    return n_workers, gpu_groups


def _gpu_list(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or len(set(gpus)) != len(gpus):
        raise ConfigError("--gpus takes distinct device ids separated by commas", key="--gpus", value=text,
                          hint="Fix: e.g. --gpus 0,1,2,3 (one worker process per GPU)")
    return gpus


def _gpu_groups(gpus: list[str], per_trial: int) -> list[str]:
    """One worker per `per_trial` GPUs (resources.devices_per_trial): ["0,1", "2,3"] for 0,1,2,3 and 2 per trial."""
    if per_trial == 1:
        return gpus
    if len(gpus) < per_trial:
        raise ConfigError(f"--gpus gives {len(gpus)} GPU(s), fewer than one trial takes", key="resources.devices_per_trial",
                          value=per_trial, hint=f"Fix: --gpus with at least {per_trial} ids, or devices_per_trial "
                          f"<= {len(gpus)}.")
    if len(gpus) % per_trial:
        usable = len(gpus) - len(gpus) % per_trial
        raise ConfigError(
            f"--gpus gives {len(gpus)} GPUs, not a multiple of devices_per_trial: {usable // per_trial} trial(s) "
            f"would run at once and GPU(s) {','.join(gpus[usable:])} would stay idle", key="resources.devices_per_trial",
            value=per_trial, hint=f"Fix: --gpus {','.join(gpus[:usable])}, or a devices_per_trial that divides "
            f"{len(gpus)}.")
    return [",".join(gpus[i:i + per_trial]) for i in range(0, len(gpus), per_trial)]


def _check_workers(sweep, n_workers: int) -> None:
    if n_workers < 0:
        raise ConfigError("--workers must be 0 or more", key="--workers", value=n_workers)
    if not BACKENDS.supports(sweep.spec.backend, "workers"):
        raise ConfigError(f"--workers/--gpus start worker processes, which the {sweep.spec.backend} backend does not "
                          "take: it places trials itself", key="backend", value=sweep.spec.backend,
                          allowed=BACKENDS.having("workers"),
                          hint="Fix: for Ray use ray.max_concurrent_trials and ray.gpus_per_trial.")
    if n_workers != 1:  # 0: workers will join from elsewhere
        refuse_sqlite(sweep.storage_url, key="storage", workers=n_workers or "joining")


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

    Example (what `ftsweep launch SWEEP --gpus 0,1` does after preparing the study):

        .. code-block:: python

            with LocalWorkers(sweep, gpus=["0", "1"]) as workers:
                workers.follow(listener, study)
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
