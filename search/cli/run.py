"""Running sweeps: `ftsweep launch` (in this process or in local worker processes) and `ftsweep worker`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import optuna
import yaml
from rich.console import Console

from objectives import load_splits
from spaces import ConfigError, load_yaml

from ..backends import get_backend
from ..backends.workers import LocalWorkers, worker_plan
from ..components import build_sampler
from ..observers.progress import SweepProgress
from ..results.tables import get_trial, render_top_table, top_trials
from ..secrets import redact_url
from ..store.queue import refuse_sqlite
from ..store.record import preview_relaunch, state_counts
from ..store.retries import WorkerPreempted, stop_on_sigterm
from ..store.storage import WORKER_ID, load_existing_study, open_storage
from ..sweep import load_run, load_sweep, sweep_from_study
from . import _common


def cmd_launch(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep: in this process, or in `--workers N` / `--gpus 0,1` worker processes.

    Launching a sweep again resumes it: finished trials are kept, interrupted ones run again. A relaunch
    that changes what the trials measure (budget, model, data, metric, seed) is refused unless
    --accept-changes records it as a new sweep revision; a changed search space is said and recorded."""
    console = _common.console(args)
    overrides = [*args.overrides, *_common.accept_overrides(args)]
    overrides += [f"tracking.wandb={args.wandb}"] if args.wandb else []
    overrides += [f"ray.address={args.ray_address}"] if args.ray_address else []
    sweep = load_sweep(args.sweep, overrides)
    # The storage URL may carry a password: from --storage or $FTSWEEP_STORAGE it never enters a file.
    storage = args.storage or sweep.spec.storage or os.environ.get("FTSWEEP_STORAGE")
    if storage:
        sweep.spec = sweep.spec.model_copy(update={"storage": storage})
    sweep.enqueue = [_enqueued_params(ref) for ref in args.enqueue]
    sweep.accept_changes = args.accept_changes
    n_workers, gpus = worker_plan(sweep, workers=args.workers, gpus=args.gpus)
    # Before anything is created (Sweep.check, which the backends run too): what a launch refuses.
    checked = sweep.check(show=lambda report: console.print(report.render()))
    for plan in checked.metric_plans:  # what the task metrics will score
        console.print(plan.line())
    if args.dry_run:
        return _dry_run(sweep, console, n_samples=args.samples)

    optuna.logging.set_verbosity(optuna.logging.INFO if args.debug else optuna.logging.ERROR)
    spec = sweep.spec
    console.print(
        f"Sweep [bold]{spec.name}[/]: {spec.objective.name} on {spec.model.name_or_path}, "
        f"{spec.n_trials or '∞'} trials × {spec.budget.max_steps} steps, {spec.sampler.name} sampler, "
        f"{spec.pruner.name} pruner, " + ", ".join(f"{d} {m}" for d, m in zip(sweep.directions, sweep.metric_names))
    )
    console.print(f"Study [cyan]{sweep.study_name}[/] in {redact_url(sweep.storage_url)}")
    if n_workers is not None:
        return _launch_workers(sweep, console, n_workers=n_workers, gpus=gpus, top=args.top)
    backend = get_backend(spec.backend)
    progress = SweepProgress(console, metric=sweep.metric_label)
    interrupted = False
    outcome = None
    try:
        with progress:
            outcome = backend(sweep, listener=progress).run()
    except KeyboardInterrupt:
        interrupted = True
    return _summarize(sweep, console, top=args.top, interrupted=interrupted,
                      ran=f"This launch ran {outcome.ran} trial(s)." if outcome else "")


def _launch_workers(sweep, console: Console, *, n_workers: int, gpus: list[str] | None, top: int) -> int:
    """Prepare the study here, then run its trials in `n_workers` processes (one per GPU with --gpus).

    This process writes the W&B sweep run once its workers have exited (they write one run per trial); with
    `--workers 0` it leaves, and the last worker out writes it."""
    progress = SweepProgress(console, metric=sweep.metric_label)
    interrupted, failures = False, []
    try:
        with progress:
            backend = get_backend(sweep.spec.backend)(sweep, listener=progress)
            study, _, remaining = backend.prepare(sweep_run_by="workers" if n_workers == 0 else "launch")
            if n_workers == 0:
                progress.stop()
                console.print(f"Prepared study [cyan]{sweep.study_name}[/] ({remaining} trial(s) to run). "
                              f"Start workers with: FTSWEEP_STORAGE=<storage URL> ftsweep worker {sweep.study_name}")
                return 0
            if remaining != 0:
                where = f"GPUs {','.join(gpus)}" if gpus else "CPU"
                console.print(f"Starting {n_workers} worker process(es) on {where}; logs in "
                              f"{sweep.output_dir / 'workers'}/")
                with LocalWorkers(sweep, n_workers=n_workers, gpus=gpus) as workers:
                    workers.follow(progress, study)
                failures = workers.failures()
                backend.end_sweep(study)
    except KeyboardInterrupt:
        interrupted = True
    for line in failures:
        console.print(f"[red]{line}[/]", markup=True)
    code = _summarize(sweep, console, top=top, interrupted=interrupted, ran=f"{n_workers} worker(s).")
    return 1 if failures and code == 0 else code


def _summarize(sweep, console: Console, *, top: int, interrupted: bool, ran: str) -> int:
    """The end of a launch: the best trials, the counts, where the study is."""
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    states = state_counts(study.get_trials(deepcopy=False))
    counts = ", ".join(f"{states[s]} {s}" for s in ("complete", "pruned", "fail", "running", "waiting") if s in states)
    if "complete" in states:
        console.print(render_top_table(study, k=top))
    if interrupted:
        console.print(f"[yellow]Stopped.[/] Kept {counts or 'no trials'} in {redact_url(sweep.storage_url)}. "
                      "Run the same command again to resume.")
        return _common.EXIT_INTERRUPTED
    console.print(f"Done: {counts}. {ran} Study: {study.study_name} in {redact_url(sweep.storage_url)}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a prepared sweep and run its queued trials until none is left (or its timeout passes)."""
    storage = args.storage or os.environ.get("FTSWEEP_STORAGE")
    if not storage:
        raise ConfigError("a worker needs the storage URL of the study", key="--storage",
                          hint="Fix: set FTSWEEP_STORAGE=URL (keeps a password out of `ps`), or pass --storage URL.")
    if os.environ.get("FTSWEEP_WORKERS") != "1":  # `launch --workers 1 / --gpus 0` starts a lone worker
        refuse_sqlite(storage, key="--storage", workers="several")
    optuna.logging.set_verbosity(optuna.logging.INFO if args.debug else optuna.logging.ERROR)
    sweep = sweep_from_study(load_existing_study(args.study, storage), storage)
    stop_on_sigterm()
    console = _common.console(args)
    console.print(f"Worker {WORKER_ID} joins study [cyan]{sweep.study_name}[/] in {redact_url(storage)}")
    progress = SweepProgress(console, metric=sweep.metric_label)
    try:
        with progress:
            outcome = get_backend(sweep.spec.backend)(sweep, listener=progress).join()
    except WorkerPreempted:
        console.print("Preempted (SIGTERM): the running trial is queued again.")
        return 128 + 15
    except KeyboardInterrupt:
        console.print("Stopped: the running trial is queued again.")
        return _common.EXIT_INTERRUPTED
    console.print(f"Worker {WORKER_ID} done: ran {outcome.ran} trial(s).")
    return 0


def _dry_run(sweep, console: Console, *, n_samples: int) -> int:
    """Validate everything (space, objective params, model path, data columns, a relaunch against its study),
    sample, train nothing."""
    for note in preview_relaunch(sweep):
        console.print(note, markup=False)
    objective = sweep.make_objective()
    objective.check_sources()
    train, validation, test = load_splits(sweep.spec.dataset, seed=sweep.spec.seed,
                                          columns=objective.required_columns(), source=sweep.source)
    resolved = sweep.spec.model_dump(mode="json")
    resolved.update(space=sweep.space.to_dict(), study_name=sweep.study_name,
                    storage=redact_url(sweep.storage_url), output_dir=str(sweep.output_dir))
    resolved["metric"] = [{"name": m, "direction": d} for m, d in zip(sweep.metric_names, sweep.directions)]
    if not sweep.multi_objective:
        resolved["metric"] = resolved["metric"][0]
    console.print(f"[bold]Resolved sweep[/] ({sweep.source}):")
    console.print(yaml.safe_dump(resolved, sort_keys=False), markup=False)
    held_out = f", {len(test)} test examples held out for `ftsweep train`" if test is not None else ""
    console.print(f"Data: {len(train)} training and {len(validation)} validation examples{held_out}.")

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=sweep.directions,
                                sampler=build_sampler(sweep.spec.sampler, sweep.space, seed=sweep.spec.seed))
    console.print(f"[bold]{n_samples} sampled configurations[/] ({sweep.spec.sampler.name} sampler):")
    for i in range(n_samples):
        trial = study.ask()
        params = sweep.space.sample(trial)
        study.tell(trial, [0.0] * len(sweep.directions))  # a placeholder value so the sampler moves on; this study is in memory only
        console.print(f"  {i}: {params}", markup=False)
    lines = sweep.budget_preview()
    if lines:
        console.print("[bold]What the budget buys[/]:")
        for line in lines:
            console.print(f"  {line}", markup=False)
    console.print("Dry run: nothing trained, nothing written.")
    return 0


def _enqueued_params(ref: str) -> dict:
    """Params to queue from a winner.yaml (its trial's params) or a study (its best trial's)."""
    if Path(ref).suffix in (".yaml", ".yml") and Path(ref).exists():
        if "params" in (load_yaml(ref) or {}):
            run, _ = load_run(ref)
            return run.provenance.get("trial_params") or run.params
    study = _common.resolve_study(ref)
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        raise ConfigError("the study has no completed trial to enqueue", key="--enqueue", value=ref)
    return get_trial(study, top_trials(study, 1)[0].number).params  # best feasible (first of a Pareto front)


def _launch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="a sweep YAML file, or the name of a bundled sweep (e.g. 'demo')")
    _common.add_overrides(p, "override any sweep field, e.g. --set n_trials=30 --set budget.max_steps=100 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything, print the resolved sweep and sampled configs; train nothing")
    _common.add_accept(p)
    p.add_argument("--accept-changes", action="store_true",
                   help="relaunch a study with settings that change what its trials measure (budget, model, data, "
                   "metric, seed...): recorded on the study as a new sweep revision, whose trials `best` and "
                   "`export` rank apart from the older ones (without it such a relaunch is refused)")
    p.add_argument("--samples", type=int, default=5, help="configurations to sample with --dry-run (default 5)")
    p.add_argument("--top", type=int, default=10, help="rows in the final table of best trials (default 10)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "off"],
                   help="W&B logging mode (overrides tracking.wandb; default auto: offline without credentials)")
    p.add_argument("--ray-address", help="backend ray: connect to this cluster (else RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage of the study (else the sweep's `storage`, else $FTSWEEP_STORAGE, else the "
                   "journal file <output_dir>/<study>.journal); prefer $FTSWEEP_STORAGE for URLs with a password")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="run trials in N worker processes on this node (0: only prepare the study, for "
                       "`ftsweep worker` elsewhere); needs a journal or database storage for N != 1")
    where.add_argument("--gpus", metavar="IDS", help="one worker process per GPU, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--enqueue", action="append", default=[], metavar="WINNER_OR_STUDY",
                   help="queue a known-good config first: an exported winner.yaml or a study (its best trial); "
                   "repeatable")


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study name a `ftsweep launch` prepared")
    p.add_argument("--storage", metavar="URL",
                   help="its Optuna storage (journal:///FILE or a database URL); default $FTSWEEP_STORAGE")


LAUNCH = _common.Command("launch", "run or resume a sweep of short fine-tunes", _launch_arguments, cmd_launch)
WORKER = _common.Command("worker", "join a prepared sweep and run its trials", _worker_arguments, cmd_worker)
