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
