"""What the commands share: the console, the arguments that name a study, and finding the study they name.

STUDY on the command line is a sweep file, a study file (FILE.journal or FILE.db; FILE.journal:NAME
when it holds several), or a study name (found in runs/NAME/NAME.journal, or in --storage URL /
$FTSWEEP_STORAGE).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from rich.console import Console

from spaces import ConfigError

from ..store.storage import STUDY_FILES, load_existing_study, open_storage, study_file_of
from ..sweep import load_sweep

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """One `ftsweep` command: its name, one line of help, its arguments and the function it runs.
    The function's docstring is the command's --help description."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# Off a terminal (a SLURM or CI log, `nohup`, `ftsweep best demo > file`) no window limits a line, yet rich
# would assume 80 columns and squeeze every table value to a character or two. No table or line reaches
# this width, so each prints whole, at its natural width.
LOG_WIDTH = 10_000


def console(args: argparse.Namespace) -> Console:
    """The console a command prints to: `--width N` columns, else $COLUMNS, else the terminal's width;
    off a terminal without either, LOG_WIDTH, so a log file gets whole tables and unwrapped lines.

    Example:
        >>> console(argparse.Namespace(width=120)).width
        120
    """
    width = getattr(args, "width", None)  # a Namespace built in Python, not by the parser, may lack it
    if width is None and not os.environ.get("COLUMNS", "").isdigit() and not _is_terminal(sys.stdout):
        width = LOG_WIDTH
    return Console(highlight=False, width=width)  # width None: rich's own choice ($COLUMNS, the terminal)


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # a closed stream
        return False


def add_width_argument(p: argparse.ArgumentParser, default=None) -> None:
    """`--width N`: how many columns tables and lines may take (see `console`)."""
    p.add_argument("--width", type=positive_int, metavar="N", default=default,
                   help="print N columns wide (default: $COLUMNS, else the terminal's width; "
                        "whole lines when the output is a file or a pipe)")


def positive_int(text: str) -> int:
    """An argparse `type=` for counts (--width, --array, ...): a whole number of 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="sweep file, study file (.journal, .db), or study name (see `ftsweep --help`)")
    p.add_argument("--storage", help="Optuna storage URL holding the study (or set FTSWEEP_STORAGE)")


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def add_overrides(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=help)


def add_accept(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept", action="append", default=[], metavar="CHECK",
                   help="go on despite this data check's errors (the sweep file's dataset.checks: {CHECK: warn}); "
                        "they are shown and recorded in the study. Repeatable")


def accept_overrides(args: argparse.Namespace) -> list[str]:
    """`--accept leakage` as the sweep-file override it stands for."""
    return [f"dataset.checks.{check}=warn" for check in args.accept]


def study_of(args: argparse.Namespace) -> optuna.Study:
    """The study `args.study` (and `args.storage`) name."""
    return resolve_study(args.study, args.storage)


def _study_file(ref: str) -> tuple[Path, str] | None:
    """(file, study name or '') when `ref` names a study file (`FILE.journal`, `FILE.db`, `FILE.db:NAME`)."""
    for suffix in STUDY_FILES:
        file, sep, name = ref.partition(suffix + ":")
        if sep:
            return Path(file + suffix).expanduser(), name
    path = Path(ref).expanduser()
    return (path, "") if path.suffix in STUDY_FILES else None


def _default_study_file(name: str) -> Path | None:
    """`runs/<name>/<name>.journal` (or `.db`, written by earlier versions) when it exists."""
    for suffix in STUDY_FILES:
        path = Path("runs") / name / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def _file_url(path: Path) -> str:
    return f"{STUDY_FILES[path.suffix]}{path.resolve()}"


def resolve_study(ref: str, storage: str | None = None) -> optuna.Study:
    """Open the study a CLI argument names. `ref` may be:

    - a study name with `--storage URL` (or `FTSWEEP_STORAGE` in the environment);
    - a sweep file: its storage and study name;
    - a study file holding one study: a `.journal` file or a `.db` SQLite file (`FILE.journal:STUDY`,
      `FILE.db:STUDY` for one of several);
    - a study name whose default file exists: `runs/<name>/<name>.journal` (or `.db`).

    Example:
        >>> resolve_study(str(sweep_file)).study_name  # a launched sweep's file (conftest.py launches one)
        'tiny'
        >>> resolve_study("tiny", storage=sweep.storage_url).study_name
        'tiny'
    """
    storage = storage or os.environ.get("FTSWEEP_STORAGE")
    if storage:
        _check_study_name(ref)
        return load_existing_study(ref, storage)
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        sweep = load_sweep(ref)
        url = sweep.storage_url
        file = study_file_of(url)
        if file is not None and not file.exists():
            raise ConfigError("this sweep has not been launched yet (no study file)", key="study", value=ref,
                              hint=f"Fix: ftsweep launch {ref}")
        return load_existing_study(sweep.study_name, url)
    named = _study_file(ref)
    if named is not None:
        file, name = named
        if not file.exists():
            raise ConfigError("no such study file", key="study", value=str(file))
        url = _file_url(file)
        if not name:
            names = optuna.study.get_all_study_names(storage=open_storage(url))
            if len(names) != 1:
                raise ConfigError(f"the file holds several studies: name one as FILE{file.suffix}:STUDY",
                                  key="study", value=ref, allowed=names)
            name = names[0]
        return load_existing_study(name, url)
    _check_study_name(ref)
    default = _default_study_file(ref)
    if default is not None:
        return load_existing_study(ref, _file_url(default))
    known = sorted({p.parent.name for suffix in STUDY_FILES for p in Path("runs").glob(f"*/*{suffix}")
                    if p.stem == p.parent.name}) if Path("runs").exists() else []
    raise ConfigError(
        "no such study", key="study", value=ref, allowed=known or "(no study under ./runs)",
        hint="Fix: pass the sweep file, the study file (.journal or .db), or --storage URL with the study name.",
    )


def _check_study_name(name: str) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError("a study name cannot contain path separators", key="study", value=name)


def resolve_storage(ref: str) -> str:
    """A storage URL from a URL, a study file, a sweep file or a study name (for `ftsweep dashboard`)."""
    if "://" in ref:
        return ref
    named = _study_file(ref)
    if named is not None:
        if not named[0].exists():
            raise ConfigError("no such study file", key="storage", value=ref)
        return _file_url(named[0])
    resolve_study(ref)  # a clear error when there is no such study
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return load_sweep(ref).storage_url
    return _file_url(_default_study_file(ref))
