"""The `ftsweep` command. Every command is a small function; COMMANDS below lists them all.

    ftsweep launch SWEEP.yaml [--set key.path=value ...] [--dry-run]
    ftsweep spaces                 # list the shipped search-space presets
    ftsweep spaces show NAME       # print one preset

Errors in the user's input print one clear line (file, key, value, what is allowed) and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from spaces import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _console() -> Console:
    return Console(highlight=False)


# ---------------------------------------------------------------------------------------- launch


def cmd_launch(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep."""
    from .spec import load_sweep

    console = _console()
    sweep = load_sweep(args.sweep, args.overrides)
    if args.dry_run:
        return _dry_run(sweep, console, n_samples=args.samples)

    import optuna

    from .backends import get_backend
    from .progress import SweepProgress
    from .results import render_top_table
    from .study import redact_url

    optuna.logging.set_verbosity(optuna.logging.INFO if args.debug else optuna.logging.ERROR)
    spec = sweep.spec
    console.print(
        f"Sweep [bold]{spec.name}[/]: {spec.objective.name} on {spec.model.name_or_path}, "
        f"{spec.n_trials or '∞'} trials × {spec.budget.max_steps} steps, {spec.sampler.name} sampler, "
        f"{spec.pruner.name} pruner, {sweep.direction} {spec.metric.name}"
    )
    console.print(f"Study [cyan]{sweep.study_name}[/] in {redact_url(sweep.storage_url)}")
    backend = get_backend(spec.backend)
    progress = SweepProgress(console, metric=spec.metric.name)
    interrupted = False
    try:
        with progress:
            outcome = backend(sweep, listener=progress).run()
    except KeyboardInterrupt:
        interrupted = True
    study = optuna.load_study(study_name=sweep.study_name, storage=sweep.storage_url)
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail", "running") if states.count(s))
    if any(s == "complete" for s in states):
        console.print(render_top_table(study, k=args.top))
    if interrupted:
        console.print(f"[yellow]Stopped.[/] Kept {counts or 'no trials'} in {redact_url(sweep.storage_url)}. "
                      "Run the same command again to resume.")
        return EXIT_INTERRUPTED
    console.print(f"Done: {counts}. This launch ran {outcome.ran} trial(s). Study: {study.study_name} "
                  f"in {redact_url(sweep.storage_url)}")
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
    train, validation = load_splits(sweep.spec.dataset, seed=sweep.spec.seed, columns=objective.required_columns(),
                                    source=sweep.source)
    resolved = sweep.spec.model_dump(mode="json")
    resolved.update(space=sweep.space.to_dict(), study_name=sweep.study_name,
                    storage=redact_url(sweep.storage_url), output_dir=str(sweep.output_dir))
    resolved["metric"]["direction"] = sweep.direction
    console.print(f"[bold]Resolved sweep[/] ({sweep.source}):")
    console.print(yaml.safe_dump(resolved, sort_keys=False), markup=False)
    console.print(f"Data: {len(train)} training and {len(validation)} validation examples.")

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=sweep.direction,
                                sampler=build_sampler(sweep.spec.sampler, sweep.space, seed=sweep.spec.seed))
    console.print(f"[bold]{n_samples} sampled configurations[/] ({sweep.spec.sampler.name} sampler):")
    for i in range(n_samples):
        trial = study.ask()
        params = sweep.space.sample(trial)
        study.tell(trial, 0.0)  # a placeholder value so the sampler moves on; this study is in memory only
        console.print(f"  {i}: {params}", markup=False)
    console.print("Dry run: nothing trained, nothing written.")
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


def _spaces_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show NAME")
    p.add_argument("name", nargs="?", help="preset name for `show`")


_command("launch", "run or resume a sweep of short fine-tunes")(_launch_arguments)(cmd_launch)
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
        err.print("error: " + str(exc), markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("Interrupted.")
        return EXIT_INTERRUPTED
    except Exception as exc:  # an unexpected failure: one line unless --debug
        if debug:
            raise
        err.print(f"error: {type(exc).__name__}: {exc}\n(run with --debug for the traceback)", markup=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
