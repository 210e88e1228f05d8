"""Working on data: `ftsweep validate-data` checks a sweep's data, `ftsweep select` picks rows to label next."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from objectives import validate_data

from ..aftersweep.select import STRATEGIES, select
from ..results.tables import format_value
from ..sweep import load_sweep
from . import _common


def cmd_validate_data(args: argparse.Namespace) -> int:
    """Check a sweep's data (columns, types, duplicates, lengths, labels, leakage); train nothing."""
    sweep = load_sweep(args.sweep, [*args.overrides, *_common.accept_overrides(args)])
    report = validate_data(sweep.make_objective())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _common.console(args).print(report.render())
    return 1 if report.errors else 0


def _validate_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="a sweep YAML file, or the name of a bundled sweep")
    _common.add_overrides(p, "override a field of the sweep file")
    _common.add_accept(p)
    _common.add_json_flag(p)


def _select_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, metavar="DIR",
                   help="a `ftsweep train` output directory (run.yaml + adapter/), or its adapter/ subdirectory")
    p.add_argument("--pool", required=True, metavar="FILE",
                   help="unlabeled rows, .jsonl or .csv, with the task's input column (text, or prompt for causal_lm)")
    p.add_argument("--k", type=int, required=True, metavar="N", help="how many rows to select for labeling")
    p.add_argument("--strategy", choices=STRATEGIES, default="entropy",
                   help="uncertainty measure (default entropy); causal_lm averages it over the generated tokens")
    p.add_argument("--out", metavar="FILE", help="where to write the selected rows (default <pool>.to_label.jsonl)")
    p.add_argument("--batch-size", type=int, metavar="N", help="rows per forward pass (default the run's eval_batch_size)")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="causal_lm: longest answer decoded per prompt (default the run's objective.args.max_new_tokens)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def cmd_select(args: argparse.Namespace) -> int:
    """Rank unlabeled examples by a trained adapter's uncertainty and write the top N for labeling."""
    chosen = select(args.adapter, args.pool, args.k, strategy=args.strategy, out=args.out,
                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, force=args.force)
    console = _common.console(args)
    for note in chosen.notes:
        console.print(f"[yellow]note:[/] {note}")
    shown = chosen.rows[:10]
    table = Table(title=f"Most uncertain rows ({chosen.strategy})"
                  + (f", the first {len(shown)} of {len(chosen.rows)}" if len(shown) < len(chosen.rows) else ""))
    table.add_column("pool row", justify="right")
    table.add_column("uncertainty", justify="right")
    table.add_column(chosen.prediction_field.replace("_", " "))
    for row in shown:
        table.add_row(str(row["pool_row"]), format_value(row["uncertainty"]), str(row[chosen.prediction_field])[:60])
    console.print(table)
    console.print(f"Wrote {len(chosen.rows)} of {chosen.pool_size} rows to {chosen.out}. Label them, add them to "
                  "the training data, then sweep again (warm-started with --enqueue winner.yaml).")
    return 0


VALIDATE_DATA = _common.Command(
    "validate-data", "check a sweep's data (columns, duplicates, lengths, leakage); exit 1 on errors",
    _validate_data_arguments, cmd_validate_data)
SELECT = _common.Command("select", "rank unlabeled rows by a trained adapter's uncertainty; write the top N to label",
                         _select_arguments, cmd_select)
