"""The `ftsweep` command: COMMANDS below is the one table of commands; each lives in a module of this
package (run, submit, results, winners, data, gate, presets) with its arguments next to it.

    ftsweep launch SWEEP.yaml [--set key.path=value ...] [--dry-run] [--enqueue winner.yaml]
                   [--storage URL] [--workers N | --gpus 0,1,2,3]
    ftsweep worker STUDY [--storage URL]   # join a prepared sweep (another node, a SLURM array task)
    ftsweep submit SWEEP.yaml --array N [--partition P] [--time T] [--gpus-per-worker G]
                   [--cpus-per-worker C] [--dry-run]   # workers as a SLURM job array on $FTSWEEP_STORAGE
    ftsweep status STUDY           # counts by state, best so far, throughput (works mid-sweep)
    ftsweep best STUDY [--top K] [--json]
    ftsweep show STUDY TRIAL       # one trial: params, learning curve, metrics, failure reason
    ftsweep importance STUDY       # parameter importances (Optuna's evaluators)
    ftsweep report STUDY --out DIR # PNG plots + one offline HTML page
    ftsweep replay STUDY [--seeds N] [--strategy tpe+asha_promote ...]  # which pruner next time, simulated
    ftsweep dashboard STORAGE      # optuna-dashboard on 127.0.0.1
    ftsweep export STUDY [--trial N | --top K] --out DIR
    ftsweep train winner.yaml [--set key.path=value ...]
    ftsweep spaces [show NAME]     # the shipped search-space presets

STUDY is a sweep file, a study file (FILE.journal or FILE.db; FILE.journal:NAME when it holds several),
or a study name (found in runs/NAME/NAME.journal, or in --storage URL / $FTSWEEP_STORAGE).

`--width N` (before or after the command name) sets how many columns tables and lines take; off a terminal
they print whole (see `_common.console`).

Errors in the user's input print one clear line (file, key, value, what is allowed) and exit 2;
`--debug` (before or after the command name) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from rich.console import Console

from spaces import ConfigError, Registry

from ..secrets import scrub_secrets
from ._common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, add_width_argument

# The one table of commands, in the order `ftsweep --help` lists them: name -> "module:Command".
# Adding a command is a `Command` in one of these modules (or a new one) plus a line here.
COMMANDS: Registry = Registry("command", key="COMMAND")
for _name, _target in (
    ("launch", "search.cli.run:LAUNCH"),
    ("validate-data", "search.cli.data:VALIDATE_DATA"),
    ("worker", "search.cli.run:WORKER"),
    ("submit", "search.cli.submit:SUBMIT"),
    ("select", "search.cli.data:SELECT"),
    ("gate", "search.cli.gate:GATE"),
    ("status", "search.cli.results:STATUS"),
    ("best", "search.cli.results:BEST"),
    ("show", "search.cli.results:SHOW"),
    ("importance", "search.cli.results:IMPORTANCE"),
    ("report", "search.cli.results:REPORT"),
    ("replay", "search.cli.replay:REPLAY"),
    ("dashboard", "search.cli.results:DASHBOARD"),
    ("export", "search.cli.winners:EXPORT"),
    ("train", "search.cli.winners:TRAIN"),
    ("spaces", "search.cli.presets:SPACES"),
):
    COMMANDS.register(_name, _target)


def build_parser() -> argparse.ArgumentParser:
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
    add_width_argument(parser)
    # Accepted after the command name too; SUPPRESS keeps a subcommand from resetting one given before it.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks and Optuna's own logs")
    add_width_argument(shared, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        command = COMMANDS.get(name)
        p = sub.add_parser(name, help=command.help, description=command.run.__doc__, parents=[shared])
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    debug = args.debug
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
