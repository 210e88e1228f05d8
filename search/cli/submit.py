"""`ftsweep submit`: a sweep's workers as a SLURM job array, the sbatch script written from the sweep.

    ftsweep submit sweep.yaml --array 8 [--partition P] [--time 4:00:00] [--gpus-per-worker 1]
                   [--cpus-per-worker 8] [--set KEY=VALUE ...] [--dry-run]

It prepares the study once (as `ftsweep launch --workers 0` does), then submits `ftsweep worker STUDY`
as `--array N` tasks with `sbatch --parsable --export=ALL`: the storage URL (from --storage or
$FTSWEEP_STORAGE, a password included) reaches the workers in the environment, never on a command line
or in the script. The script is `worker_script(...)`; with its defaults it is exactly
scripts/cluster/slurm_workers.sbatch, the file for submitting by hand (`sbatch --array=0-7 ...`): both
keep the `#SBATCH` headers to what every partition takes, and what differs between clusters (GPUs,
CPUs, time, partition) is an option of `ftsweep submit`, or of sbatch, whose command-line options
override the headers.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from spaces import ConfigError

from ..backends import get_backend
from ..secrets import redact_url, scrub_secrets
from ..store.queue import refuse_sqlite
from ..sweep import load_sweep
from . import _common

# What every partition takes: one CPU, requeue on preemption or node failure, and the log appended to
# (not truncated) when a task runs again, so its earlier attempts stay in it.
DEFAULT_OPTIONS: dict[str, str | None] = {
    "job-name": "ftsweep-worker",
    "cpus-per-task": "1",
    "requeue": None,
    "open-mode": "append",
    "output": "ftsweep-worker-%A_%a.log",
}

_HEAD = """\
#!/bin/bash
# ftsweep workers as a SLURM job array: one worker per array task, all on one study in PostgreSQL (or a
# journal file on a filesystem every node shares). Trials are capped at the sweep's n_trials across all
# workers; a cancelled, preempted, requeued or killed worker's trial is run again, once.
#
# `ftsweep submit sweep.yaml --array 8 ...` writes this script with its options in the headers and
# submits it (README, "Running on SLURM"). By hand:
#   export FTSWEEP_STORAGE='postgresql://ftsweep:PASSWORD@DBHOST:5432/optuna'  # scripts/cluster/start_postgres.sh
#   ftsweep launch my-sweep.yaml --workers 0        # once: creates the study and queues its n_trials
#   sbatch --array=0-7 scripts/cluster/slurm_workers.sbatch my-sweep   # 8 workers (the study name)
# The headers below are what every partition takes (CPU-only ones too); sbatch's own options override
# them, e.g. on a GPU partition:
#   sbatch --array=0-7 --gpus=1 --cpus-per-task=8 --partition=gpu --time=12:00:00 \\
#     scripts/cluster/slurm_workers.sbatch my-sweep
#
# sbatch exports the submitting shell's environment (--export=ALL), so the URL, password included,
# reaches the workers without appearing on any command line, in `squeue` or in `ps`.
# Add more workers at any time with another sbatch; `ftsweep status my-sweep` shows progress.
#
# Trials bigger than one GPU: launch the study with `--set resources.devices_per_trial=4` and give each
# array task that many GPUs (`sbatch --gpus=4 --array=0-3 ...`); each worker then runs its trials as a
# 4-process DDP job on its own 4 GPUs (NCCL on loopback), one trial at a time.
"""

_BODY = """\
set -euo pipefail
STUDY=${{1:?usage: sbatch --array=0-N slurm_workers.sbatch STUDY_NAME}}
: "${{FTSWEEP_STORAGE:?export FTSWEEP_STORAGE=<storage URL> before sbatch}}"
export FTSWEEP_WORKER_INDEX=${{SLURM_ARRAY_TASK_ID:-0}}
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
# One line per attempt: a requeued task appends to the same log (--open-mode=append).
echo "ftsweep worker $STUDY: job ${{SLURM_JOB_ID:-}} array task ${{SLURM_ARRAY_TASK_ID:-0}}," \\
  "attempt $(( ${{SLURM_RESTART_COUNT:-0}} + 1 )) on $(hostname) at $(date '+%F %T')"

# SLURM pins the task's GPUs through CUDA_VISIBLE_DEVICES. On cancellation, preemption or requeue srun
# passes SIGTERM on: the worker records its running trial as preempted and queues it again
# (retries.max_retries); a worker killed outright is seen by the others (its process is gone, or its
# heartbeats stop: retries.grace_period) and its trial queued again.
exec srun --kill-on-bad-exit=1 --cpus-per-task="${{SLURM_CPUS_PER_TASK:-1}}" {ftsweep} worker "$STUDY"
"""


def worker_script(options: dict[str, str | None] | None = None, *, ftsweep: str = "ftsweep") -> str:
    """The sbatch script of a worker array: DEFAULT_OPTIONS updated by `options` (None as a value: a flag,
    e.g. `requeue`) as `#SBATCH` headers, running `ftsweep` (a command line) as the worker.

    Example:
        >>> script = worker_script({"partition": "gpu", "gpus": "1"})
        >>> [line for line in script.splitlines() if line.startswith("#SBATCH")][-2:]
        ['#SBATCH --partition=gpu', '#SBATCH --gpus=1']
    """
    merged = {**DEFAULT_OPTIONS, **(options or {})}
    headers = "".join(f"#SBATCH --{key}\n" if value is None else f"#SBATCH --{key}={value}\n"
                      for key, value in merged.items())
    return _HEAD + headers + _BODY.format(ftsweep=ftsweep)


# The manual-use copy in a source checkout (absent from an installed package); tests keep it equal to worker_script().
REPO_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster" / "slurm_workers.sbatch"


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a sweep's workers to SLURM as a job array: prepare the study once, write the sbatch script
    from the sweep and the options below, submit it (`sbatch --parsable`), print how to follow it.
    The storage URL travels in the environment (--export=ALL), never on a command line."""
    console = _common.console(args)
    err = Console(stderr=True, highlight=False)
    if args.array < 1:
        raise ConfigError("a job array needs at least one worker", key="--array", value=str(args.array))
    sweep = load_sweep(args.sweep, args.overrides)
    storage = args.storage or sweep.spec.storage or os.environ.get("FTSWEEP_STORAGE")
    if storage:
        sweep.spec = sweep.spec.model_copy(update={"storage": storage})
    url = sweep.storage_url
    refuse_sqlite(url, key="--storage", workers=f"{args.array} SLURM")
    if url.startswith("journal"):
        err.print(f"warning: the study is a journal file ({redact_url(url)}): every node running a worker must "
                  "see it at that path (a shared filesystem). For a cluster prefer PostgreSQL "
                  "(scripts/cluster/start_postgres.sh) with its URL in $FTSWEEP_STORAGE.", markup=False, soft_wrap=True)
    sweep.check(show=lambda report: console.print(report.render()))

    script_dir = sweep.output_dir.resolve() / "slurm"
    log = script_dir / f"{sweep.study_name}-%A_%a.log"
    options = {"job-name": f"ftsweep-{sweep.study_name}", "output": str(log), "array": f"0-{args.array - 1}"}
    options.update({key: value for key, value in (
        ("partition", args.partition), ("time", args.time),
        ("cpus-per-task", args.cpus_per_worker and str(args.cpus_per_worker)),
        ("gpus", args.gpus_per_worker and str(args.gpus_per_worker))) if value})
    script = worker_script(options, ftsweep=f"{shlex.quote(sys.executable)} -m search.cli")
    command = ["sbatch", "--parsable", "--export=ALL", str(script_dir / "workers.sbatch"), sweep.study_name]
    if args.dry_run:
        console.print(script, markup=False, end="")
        console.print(f"Dry run: nothing prepared or submitted. It would run (FTSWEEP_STORAGE={redact_url(url)} "
                      f"in the environment): {shlex.join(command)}", markup=False)
        return 0

    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigError("sbatch is not on PATH: submit from a SLURM login node", key="submit",
                          hint="Fix: run it where `sbatch --version` works (for a one-machine cluster: "
                               "scripts/cluster/start_slurm.sh), or use --dry-run to see the script.")
    script_dir.mkdir(parents=True, exist_ok=True)
    (script_dir / "workers.sbatch").write_text(script)
    env = {**os.environ, "FTSWEEP_STORAGE": url}
    # A request no node can meet (more CPUs or GPUs than any has, a wrong partition) is refused here, with
    # SLURM's reason, before the study is touched; without this check such an array may pend forever.
    _sbatch([sbatch, "--test-only", *command[2:]], env, url)

    _, _, remaining = get_backend(sweep.spec.backend)(sweep).prepare()
    if remaining == 0:
        console.print(f"Study [cyan]{sweep.study_name}[/] has no trial left to run: nothing submitted. "
                      f"See `ftsweep status {sweep.study_name}`.")
        return 0
    out = _sbatch([sbatch, *command[1:]], env, url)
    job = out.strip().splitlines()[-1].split(";")[0]
    if not re.fullmatch(r"\d+", job):
        raise RuntimeError(f"sbatch printed no job id: {scrub_secrets(out, urls=[url])!r}")
    where = f" on partition {args.partition}" if args.partition else ""
    left = "all" if remaining is None else remaining
    console.print(f"Submitted job [bold]{job}[/]: {args.array} worker(s) of study [cyan]{sweep.study_name}[/] "
                  f"in {redact_url(url)}{where}, {left} trial(s) to run.")
    console.print("Follow it:", markup=False)
    console.print(f"  squeue -j {job}\n"
                  f"  tail -f {str(log).replace('%A', job).replace('%a', '*')}\n"
                  f"  ftsweep status {sweep.study_name}    # with FTSWEEP_STORAGE set as here\n"
                  f"  scancel {job}                   # stop every worker (their trials are queued again)",
                  markup=False)
    return 0


def _sbatch(command: list[str], env: dict[str, str], url: str) -> str:
    """Run sbatch; its refusal becomes a ConfigError with SLURM's own reason."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError("sbatch did not answer within 120 s: is slurmctld up? (`scontrol ping`)") from None
    if done.returncode != 0:
        reason = scrub_secrets((done.stderr or done.stdout).strip(), urls=[url])
        raise ConfigError(f"SLURM refused the job array: {reason}", key="submit",
                          hint="Fix: ask for what a node of the partition has (--cpus-per-worker, "
                               "--gpus-per-worker, --partition, --time; `sinfo -o '%P %c %m %G %l'` lists them).")
    return done.stdout


def _submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="a sweep YAML file, or the name of a bundled sweep")
    _common.add_overrides(p, "override any sweep field, e.g. --set n_trials=64 (repeatable)")
    p.add_argument("--array", type=_common.positive_int, default=1, metavar="N",
                   help="how many workers: array tasks 0..N-1, one `ftsweep worker` each (default 1)")
    p.add_argument("--partition", metavar="P", help="the SLURM partition (default: the cluster's default one)")
    p.add_argument("--time", metavar="T", help="each worker's time limit, e.g. 4:00:00 (default: the partition's)")
    p.add_argument("--gpus-per-worker", type=_common.positive_int, metavar="G",
                   help="GPUs per worker (sbatch --gpus=G); leave out on CPU-only partitions")
    p.add_argument("--cpus-per-worker", type=_common.positive_int, metavar="C",
                   help="CPUs per worker (sbatch --cpus-per-task=C; default 1)")
    p.add_argument("--storage", metavar="URL",
                   help="the study's storage: a database URL (default: the sweep's `storage`, else "
                   "$FTSWEEP_STORAGE, else the journal file in the output directory, which every node must share); "
                   "prefer $FTSWEEP_STORAGE for URLs with a password. SQLite is refused")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script; prepare and submit nothing")


SUBMIT = _common.Command("submit", "run a sweep's workers as a SLURM job array", _submit_arguments, cmd_submit)
