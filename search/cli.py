"""The `ftsweep` command. Every command is a small function; COMMANDS below lists them all.

    ftsweep launch SWEEP.yaml [--set key.path=value ...] [--dry-run] [--enqueue winner.yaml]
                   [--storage URL] [--workers N | --gpus 0,1,2,3]
    ftsweep worker STUDY [--storage URL]   # join a prepared sweep (another node, a SLURM array task)
    ftsweep status STUDY           # counts by state, best so far, throughput (works mid-sweep)
    ftsweep best STUDY [--top K] [--json]
    ftsweep show STUDY TRIAL       # one trial: params, learning curve, metrics, failure reason
    ftsweep importance STUDY       # parameter importances (Optuna's evaluators)
    ftsweep report STUDY --out DIR # PNG plots + one offline HTML page
    ftsweep dashboard STORAGE      # optuna-dashboard on 127.0.0.1
    ftsweep export STUDY [--trial N | --top K] --out DIR
    ftsweep train winner.yaml [--set key.path=value ...]
    ftsweep spaces [show NAME]     # the shipped search-space presets

STUDY is a sweep file, a study file (FILE.journal or FILE.db; FILE.journal:NAME when it holds several),
or a study name (found in runs/NAME/NAME.journal, or in --storage URL / $FTSWEEP_STORAGE).

Errors in the user's input print one clear line (file, key, value, what is allowed) and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from spaces import ConfigError

from . import active_learning as _active_learning
from . import gate as _gate
from .study import scrub_secrets

EXIT_BAD_INPUT = 2

EXIT_INTERRUPTED = 130


def _console() -> Console:
    return Console(highlight=False)


# ---------------------------------------------------------------------------------------- launch


def cmd_launch(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep: in this process, or in `--workers N` / `--gpus 0,1` worker processes."""
    import os

    from .spec import load_sweep

    console = _console()
    overrides = list(args.overrides) + ([f"tracking.wandb={args.wandb}"] if args.wandb else [])
    overrides += [f"ray.address={args.ray_address}"] if args.ray_address else []
    overrides += ["ray.resume=true"] if args.resume else []
    sweep = load_sweep(args.sweep, overrides)
    # The storage URL may carry a password: from --storage or $FTSWEEP_STORAGE it never enters a file.
    storage = args.storage or sweep.spec.storage or os.environ.get("FTSWEEP_STORAGE")
    if storage:
        sweep.spec = sweep.spec.model_copy(update={"storage": storage})
    sweep.enqueue = [_enqueued_params(ref) for ref in args.enqueue]
    gpus = _gpu_list(args.gpus) if args.gpus is not None else None
    n_workers = len(gpus) if gpus else args.workers
    if n_workers is not None:
        _check_workers(sweep, n_workers)
    # Before anything is created, here rather than in every worker: a bad model or data path
    # (`check_sources`, run by reading the model's config), a PEFT method / target module it rejects,
    # or a dropout it does not have.
    objective = sweep.make_objective()
    objective.check_space(sweep.space)
    _check_data(sweep, objective, console)
    if args.dry_run:
        return _dry_run(sweep, console, n_samples=args.samples)

    import optuna

    from .backends import get_backend
    from .progress import SweepProgress
    from .study import redact_url

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


def _check_data(sweep, objective, console: Console) -> None:
    """`ftsweep validate-data` before every launch: warnings are shown, errors stop it (nothing created yet)."""
    from objectives.data_checks import validate_data

    report = validate_data(objective)
    if report.errors or report.warnings:
        console.print(report.render())
    if report.errors:
        first = report.errors[0]
        raise ConfigError(f"the data has {len(report.errors)} error(s); first [{first.check}]: {first.message}",
                          source=sweep.source, key="dataset.source", value=sweep.spec.dataset.source,
                          hint=first.fix or "Fix: see `ftsweep validate-data SWEEP` for the full report.")


def cmd_validate_data(args: argparse.Namespace) -> int:
    """Check a sweep's data (columns, types, duplicates, lengths, labels, leakage); train nothing."""
    import json

    from objectives.data_checks import validate_data

    from .spec import load_sweep

    sweep = load_sweep(args.sweep, list(args.overrides))
    report = validate_data(sweep.make_objective())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _console().print(report.render())
    return 1 if report.errors else 0


def _gpu_list(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or len(set(gpus)) != len(gpus):
        raise ConfigError("--gpus takes distinct device ids separated by commas", key="--gpus", value=text,
                          hint="Fix: e.g. --gpus 0,1,2,3 (one worker process per GPU)")
    return gpus


def _check_workers(sweep, n_workers: int) -> None:
    from .workers import refuse_sqlite

    if n_workers < 0:
        raise ConfigError("--workers must be 0 or more", key="--workers", value=n_workers)
    if sweep.spec.backend != "optuna":
        raise ConfigError("--workers/--gpus start Optuna worker processes; Ray places trials itself",
                          key="backend", value=sweep.spec.backend,
                          hint="Fix: for Ray use ray.max_concurrent_trials and ray.gpus_per_trial.")
    if n_workers != 1:  # 0: workers will join from elsewhere
        refuse_sqlite(sweep.storage_url, key="storage", workers=n_workers or "joining")


def _launch_workers(sweep, console: Console, *, n_workers: int, gpus: list[str] | None, top: int) -> int:
    """Prepare the study here, then run its trials in `n_workers` processes (one per GPU with --gpus)."""
    from .backends._optuna import OptunaBackend
    from .progress import SweepProgress
    from .workers import LocalWorkers

    progress = SweepProgress(console, metric=sweep.metric_label)
    interrupted, failures = False, []
    try:
        with progress:
            study, _, remaining = OptunaBackend(sweep, listener=progress).prepare()
            if n_workers == 0:
                progress.progress.stop()
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
    except KeyboardInterrupt:
        interrupted = True
    for line in failures:
        console.print(f"[red]{line}[/]", markup=True)
    code = _summarize(sweep, console, top=top, interrupted=interrupted, ran=f"{n_workers} worker(s).")
    return 1 if failures and code == 0 else code


def _summarize(sweep, console: Console, *, top: int, interrupted: bool, ran: str) -> int:
    """The end of a launch: the best trials, the counts, where the study is."""
    import optuna

    from .results import render_top_table
    from .study import open_storage, redact_url

    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail", "running", "waiting")
                       if states.count(s))
    if any(s == "complete" for s in states):
        console.print(render_top_table(study, k=top))
    if interrupted:
        console.print(f"[yellow]Stopped.[/] Kept {counts or 'no trials'} in {redact_url(sweep.storage_url)}. "
                      "Run the same command again to resume.")
        return EXIT_INTERRUPTED
    console.print(f"Done: {counts}. {ran} Study: {study.study_name} in {redact_url(sweep.storage_url)}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a prepared sweep and run its queued trials until none is left (or its timeout passes)."""
    import os

    import optuna

    from .backends._optuna import OptunaBackend
    from .progress import SweepProgress
    from .retries import WorkerPreempted, stop_on_sigterm
    from .study import WORKER, load_existing_study, redact_url
    from .workers import refuse_sqlite, sweep_from_study

    storage = args.storage or os.environ.get("FTSWEEP_STORAGE")
    if not storage:
        raise ConfigError("a worker needs the storage URL of the study", key="--storage",
                          hint="Fix: set FTSWEEP_STORAGE=URL (keeps a password out of `ps`), or pass --storage URL.")
    if os.environ.get("FTSWEEP_WORKERS") != "1":  # `launch --workers 1 / --gpus 0` starts a lone worker
        refuse_sqlite(storage, key="--storage", workers="several")
    optuna.logging.set_verbosity(optuna.logging.INFO if args.debug else optuna.logging.ERROR)
    sweep = sweep_from_study(load_existing_study(args.study, storage), storage)
    stop_on_sigterm()
    console = _console()
    console.print(f"Worker {WORKER} joins study [cyan]{sweep.study_name}[/] in {redact_url(storage)}")
    progress = SweepProgress(console, metric=sweep.metric_label)
    try:
        with progress:
            outcome = OptunaBackend(sweep, listener=progress).join()
    except WorkerPreempted:
        console.print("Preempted (SIGTERM): the running trial is queued again.")
        return 128 + 15
    except KeyboardInterrupt:
        console.print("Stopped: the running trial is queued again.")
        return EXIT_INTERRUPTED
    console.print(f"Worker {WORKER} done: ran {outcome.ran} trial(s).")
    return 0


def _dry_run(sweep, console: Console, *, n_samples: int) -> int:
    """Validate everything (space, objective params, model path, data columns), sample, train nothing."""
    import optuna
    import yaml

    from objectives import load_splits

    from .samplers import build_sampler
    from .study import redact_url

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
    console.print("Dry run: nothing trained, nothing written.")
    return 0


def _enqueued_params(ref: str) -> dict:
    """Params to queue from a winner.yaml (its trial's params) or a study (its best trial's)."""
    from pathlib import Path

    from .spec import load_run
    from .study import resolve_study

    if Path(ref).suffix in (".yaml", ".yml") and Path(ref).exists():
        from spaces import load_yaml

        if "params" in (load_yaml(ref) or {}):
            run, _ = load_run(ref)
            return run.provenance.get("trial_params") or run.params
    study = resolve_study(ref)
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        raise ConfigError("the study has no completed trial to enqueue", key="--enqueue", value=ref)
    from .results import get_trial, top_trials

    return get_trial(study, top_trials(study, 1)[0].number).params  # best feasible (first of a Pareto front)


# ---------------------------------------------------------------------------------------- inspect


def _study(args: argparse.Namespace):
    from .study import resolve_study

    return resolve_study(args.study, args.storage)


def cmd_status(args: argparse.Namespace) -> int:
    """Counts by state, best value so far, elapsed time and trials per hour; works while a sweep runs."""
    import json

    from .results import format_value, study_status

    status = study_status(_study(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    counts = status["counts"]
    console = _console()
    console.print(f"Study [bold]{status['study']}[/]: {status['total']} trials — " + ", ".join(
        f"{n} {state}" for state, n in counts.items()))
    best = status["best"]
    if "pareto_front" in status:
        console.print(f"Pareto front ({status['metric']}): trials {status['pareto_front']}")
    else:
        console.print(f"Best {status['metric']}: " + (f"{format_value(best['value'])} (trial {best['number']})"
                                                      if best else "— (no completed trial yet)"))
    rate = status["trials_per_hour"]
    console.print(f"Elapsed {status['elapsed_s'] / 60:.1f} min, "
                  f"{format_value(rate) if rate else '—'} finished trials per hour")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """The top trials: number, value, searched params, steps reached, duration (Pareto front if multi-objective)."""
    import json

    from .results import best_rows, render_top_table

    study = _study(args)
    rows = best_rows(study, args.top)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        raise ConfigError("the study has no completed trial yet", key="study", value=study.study_name,
                          hint="Check progress with `ftsweep status`.")
    _console().print(render_top_table(study, k=args.top))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Everything about one trial: params, learning curve, metrics, duration, state, failure reason."""
    import json

    from rich.table import Table

    from objectives._base import COST_METRICS

    from .results import format_value, get_trial, trial_details

    study = _study(args)
    details = trial_details(get_trial(study, args.trial))
    if args.json:
        print(json.dumps(details, indent=2, default=str))
        return 0
    console = _console()
    value = format_value(details["value"]) if details["value"] is not None else "—"
    if details["values"] is not None:
        value = ", ".join(format_value(v) for v in details["values"])
    duration = f"{details['duration_s']:.1f}s" if details["duration_s"] else "—"
    console.print(f"Trial [bold]{details['number']}[/]: {details['state']}, value {value}, {duration}")
    if details["fail_reason"]:
        console.print(f"[red]Failure:[/] {details['fail_reason']}", markup=True)
    if details["constraints"]:
        console.print("Constraints (<= 0 is satisfied): " + ", ".join(
            f"{k}: {format_value(v)}" for k, v in details["constraints"].items()))
    if details["retry"]:
        console.print(f"Retry policy ({details['failure_cause']}): {details['retry']}")
    if details["retry_of"] is not None:
        changed = ", ".join(f"{k}={v}" for k, v in (details["overrides"] or {}).items())
        console.print(f"Retry {details['attempt']} of trial {details['retry_of']} ({details['retry_cause']})"
                      + (f" with {changed}" if changed else ""))
    params = Table(title="Params (searched ones marked *)")
    params.add_column("name")
    params.add_column("value", justify="right")
    for name, v in details["params"].items():
        params.add_row(name + (" *" if name in details["searched"] else ""), format_value(v))
    console.print(params)
    if details["eval_history"]:
        history = details["eval_history"]
        # The curve shows what the sweep optimizes and records, and the overfitting gap; every other
        # metric (costs, the task's other scores) is in "Final metrics" below, so the table stays readable.
        record = study.user_attrs.get("sweep", {})
        wanted = ["eval_loss", *(study.metric_names or []), *record.get("record_metrics", []), "train_eval_gap"]
        names = [k for k in dict.fromkeys(wanted) if k in history[0]] or [
            k for k in history[0] if k not in ("step", "interval_train_loss", *COST_METRICS)]
        curve = Table(title="Evaluations (learning curve)")
        curve.add_column("step", justify="right")
        for name in names:
            curve.add_column(name, justify="right")
        for row in history:
            curve.add_row(str(row["step"]), *[format_value(row.get(n)) for n in names])
        console.print(curve)
    if details["metrics"]:
        console.print("Final metrics: " + ", ".join(f"{k}={format_value(v)}" for k, v in details["metrics"].items()))
    console.print("Outputs: trials keep no checkpoint; `ftsweep export STUDY --trial N` writes this trial's config.")
    return 0


def cmd_importance(args: argparse.Namespace) -> int:
    """Parameter importances (fANOVA by default) as a table."""
    from .report import importance_table

    _console().print(importance_table(_study(args), evaluator=args.evaluator))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Optuna's plots as PNG files plus one self-contained HTML page that opens offline."""
    from pathlib import Path

    from .report import write_report

    study = _study(args)
    files = write_report(study, Path(args.out), evaluator=args.evaluator)
    console = _console()
    if args.wandb:
        from .tracking import TrackingConfig, make_tracker

        tracker = make_tracker(TrackingConfig(wandb=args.wandb, **_tracking_of(study)), Path(args.out),
                               say=lambda text: console.print(text, markup=False))
        tracker.sweep_end(study, Path(args.out))
    for path in files.written:
        console.print(f"wrote {path}")
    for note in files.notes:
        console.print(f"[yellow]skipped:[/] {note}")
    console.print(f"Open {files.html} in a browser (works offline).")
    return 0


def _tracking_of(study) -> dict:
    """project/entity/tags of the sweep that wrote the study, for W&B runs made afterwards."""
    tracking = (study.user_attrs.get("sweep") or {}).get("tracking") or {}
    return {k: tracking[k] for k in ("project", "entity", "tags") if tracking.get(k) is not None}


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the study storage (127.0.0.1 by default)."""
    from .dashboard import run_dashboard
    from .study import resolve_storage

    run_dashboard(resolve_storage(args.storage_or_study), host=args.host, port=args.port, console=_console())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write winner.yaml, training_args.json and adapter_config.json for the best (or chosen) trial(s)."""
    from pathlib import Path

    from .export import export

    exported = export(_study(args), Path(args.out), trial=args.trial, top=args.top, pareto=args.pareto,
                      force=args.force, allow_incomplete=args.allow_incomplete)
    console = _console()
    if args.pareto:
        console.print(f"Pareto front: {len(exported)} trial(s), listed with their metrics in "
                      f"{Path(args.out) / 'pareto.json'}")
    for item in exported:
        console.print(f"Exported trial {item.trial} to {item.directory}/ (winner.yaml, training_args.json, "
                      "adapter_config.json)")
    console.print(f"Next: ftsweep train {exported[0].directory / 'winner.yaml'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Final fit of an exported config: train, evaluate on the held-out test split, save the adapter."""
    from .results import format_value
    from .spec import load_run
    from .train import output_dir_for, train_run

    run, objective_cls = load_run(args.run, args.overrides)
    console = _console()
    console.print(f"Training [bold]{run.name}[/] ({objective_cls.name}, {run.budget.max_steps} steps) "
                  f"into {output_dir_for(run)}")
    record = train_run(run, objective_cls, source=args.run, force=args.force)
    metrics = record["metrics"]
    console.print("Metrics: " + ", ".join(f"{k}={format_value(v)}" for k, v in metrics.items()))
    repro = record.get("reproduction")
    if repro:
        like = "" if repro["comparable"] else " (different budget or data than the trial: not like for like)"
        console.print(f"Trial value {format_value(repro['trial_value'])} → {format_value(repro['value'])}: "
                      f"{repro['relative_error']:.2%} apart{like}")
    console.print(f"Adapter: {record['adapter']}")
    return 0


# ---------------------------------------------------------------------------------------- spaces


def cmd_spaces(args: argparse.Namespace) -> int:
    """List the shipped search-space presets, or show one."""
    import yaml

    from spaces import get_preset, list_presets

    console = _console()
    if args.action == "show":
        if not args.name:
            raise ConfigError("`ftsweep spaces show` needs a preset name", allowed=list_presets())
        space = get_preset(args.name)
        console.print(yaml.safe_dump(space.to_dict(), sort_keys=False), markup=False)
        return 0
    from rich.table import Table

    table = Table(title="Search-space presets (use as `space: NAME` in a sweep file)")
    table.add_column("name")
    table.add_column("params", justify="right")
    table.add_column("description")
    for name in list_presets():
        space = get_preset(name)
        table.add_row(name, str(len(space.names)), space.description)
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------- wiring

# The one list of commands: name -> (function, help, argument adder).
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]] = {}


def _command(name: str, help: str):
    def register(add_arguments):
        def decorator(fn):
            COMMANDS[name] = (fn, help, add_arguments)
            return fn

        return decorator

    return register


def _launch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="a sweep YAML file, or the name of a bundled sweep (e.g. 'demo')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any sweep field, e.g. --set n_trials=30 --set budget.max_steps=100 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything, print the resolved sweep and sampled configs; train nothing")
    p.add_argument("--samples", type=int, default=5, help="configurations to sample with --dry-run (default 5)")
    p.add_argument("--top", type=int, default=10, help="rows in the final table of best trials (default 10)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "off"],
                   help="W&B logging mode (overrides tracking.wandb; default auto: offline without credentials)")
    p.add_argument("--ray-address", help="backend ray: connect to this cluster (else RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage of the study (else the sweep's `storage`, else $FTSWEEP_STORAGE, else "
                   "SQLite in the output directory); prefer $FTSWEEP_STORAGE for URLs with a password")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="run trials in N worker processes on this node (0: only prepare the study, for "
                       "`ftsweep worker` elsewhere); needs a journal or database storage for N != 1")
    where.add_argument("--gpus", metavar="IDS", help="one worker process per GPU, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--resume", action="store_true",
                   help="resume an interrupted sweep (launching again always does: finished trials are kept, "
                   "interrupted ones re-run)")
    p.add_argument("--enqueue", action="append", default=[], metavar="WINNER_OR_STUDY",
                   help="queue a known-good config first: an exported winner.yaml or a study (its best trial); "
                   "repeatable")


def _study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="sweep file, study file (.journal, .db), or study name (see `ftsweep --help`)")
    p.add_argument("--storage", help="Optuna storage URL holding the study (or set FTSWEEP_STORAGE)")


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study name a `ftsweep launch` prepared")
    p.add_argument("--storage", metavar="URL",
                   help="its Optuna storage (journal:///FILE or a database URL); default $FTSWEEP_STORAGE")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def _validate_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="a sweep YAML file, or the name of a bundled sweep")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a field of the sweep file")
    _json_flag(p)


def _status_arguments(p):
    _study_arguments(p)
    _json_flag(p)


def _best_arguments(p):
    _study_arguments(p)
    p.add_argument("--top", type=int, default=10, help="how many trials (default 10)")
    _json_flag(p)


def _show_arguments(p):
    _study_arguments(p)
    p.add_argument("trial", type=int, help="trial number")
    _json_flag(p)


def _evaluator_flag(p):
    p.add_argument("--evaluator", choices=["fanova", "mdi", "ped_anova"], default="fanova",
                   help="Optuna importance evaluator (default fanova)")


def _importance_arguments(p):
    _study_arguments(p)
    _evaluator_flag(p)


def _report_arguments(p):
    _study_arguments(p)
    p.add_argument("--out", required=True, help="directory for the PNGs and report.html")
    p.add_argument("--wandb", nargs="?", const="auto", choices=["auto", "online", "offline"],
                   help="also log the sweep run (trial table, best config, pictures) to W&B")
    _evaluator_flag(p)


def _dashboard_arguments(p):
    p.add_argument("storage_or_study", help="a storage URL, a study file (.journal, .db), a sweep file or a study name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)


def _export_arguments(p):
    _study_arguments(p)
    p.add_argument("--out", required=True, help="directory to write into (refused if it exists, unless --force)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="export this trial (default: the best)")
    which.add_argument("--top", type=int, help="export the K best trials, one folder each")
    which.add_argument("--pareto", action="store_true",
                       help="multi-objective studies: every trial on the Pareto front, one folder each, plus pareto.json")
    p.add_argument("--force", action="store_true", help="write into an existing directory")
    p.add_argument("--allow-incomplete", action="store_true", help="allow exporting a pruned or failed trial")


def _train_arguments(p):
    p.add_argument("run", help="a winner.yaml written by `ftsweep export`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a field, e.g. --set budget.max_steps=500 --set merge_validation=true")
    p.add_argument("--force", action="store_true", help="overwrite an existing adapter in the output directory")


def _spaces_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show NAME")
    p.add_argument("name", nargs="?", help="preset name for `show`")


_command("launch", "run or resume a sweep of short fine-tunes")(_launch_arguments)(cmd_launch)
_command("validate-data", "check a sweep's data (columns, duplicates, lengths, leakage); exit 1 on errors")(
    _validate_data_arguments)(cmd_validate_data)
_command("worker", "join a prepared sweep and run its trials")(_worker_arguments)(cmd_worker)
_command("select", "rank unlabeled rows by a trained adapter's uncertainty; write the top N to label")(
    _active_learning.add_arguments)(_active_learning.cmd_select)
_command("gate", "exit 0 only if a candidate beats the champion on the same held-out test set")(
    _gate.add_arguments)(_gate.cmd_gate)
_command("status", "counts by state, best so far, throughput")(_status_arguments)(cmd_status)
_command("best", "table of the top trials (--json for scripts)")(_best_arguments)(cmd_best)
_command("show", "everything about one trial")(_show_arguments)(cmd_show)
_command("importance", "parameter importances as a table")(_importance_arguments)(cmd_importance)
_command("report", "PNG plots and an offline HTML report")(_report_arguments)(cmd_report)
_command("dashboard", "serve optuna-dashboard on the study storage")(_dashboard_arguments)(cmd_dashboard)
_command("export", "write winner.yaml, training_args.json, adapter_config.json")(_export_arguments)(cmd_export)
_command("train", "final fit of an exported winner.yaml")(_train_arguments)(cmd_train)
_command("spaces", "list search-space presets, or show one")(_spaces_arguments)(cmd_spaces)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own_version = version("ftsweep")
    except PackageNotFoundError:
        own_version = "unknown"
    parser = argparse.ArgumentParser(
        prog="ftsweep",
        description="Hyperparameter search for LLM fine-tuning: Optuna sweeps of short PEFT fine-tunes, "
        "pruned early, stored in a study you can come back to.",
        epilog="Start with: ftsweep launch demo --dry-run",
    )
    parser.add_argument("--version", action="version", version=f"ftsweep {own_version}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and Optuna's own logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, help, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=fn.__doc__)
        add_arguments(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # --debug may come before or after the command name.
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = parser.parse_args(argv)
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    err = Console(stderr=True, highlight=False)
    try:
        return args.func(args)
    except ConfigError as exc:
        if debug:
            raise
        err.print("error: " + scrub_secrets(str(exc)), markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("Interrupted.")
        return EXIT_INTERRUPTED
    except Exception as exc:  # an unexpected failure: one line unless --debug
        if debug:
            raise
        err.print(f"error: {type(exc).__name__}: {scrub_secrets(str(exc))}\n(run with --debug for the traceback)",
                  markup=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
