"""Carrying winners out of a study: `ftsweep export` writes a trial's files, `ftsweep train` fits them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..aftersweep.train import output_dir_for, train_run
from ..results.export import export
from ..results.tables import format_value, left_out_line
from ..sweep import load_run
from . import _common


def cmd_export(args: argparse.Namespace) -> int:
    """Write winner.yaml, training_args.json and adapter_config.json for the best (or chosen) trial(s)."""
    study = _common.study_of(args)
    exported = export(study, Path(args.out), trial=args.trial, top=args.top, pareto=args.pareto,
                      force=args.force, allow_incomplete=args.allow_incomplete)
    console = _common.console(args)
    left_out = left_out_line(study) if args.trial is None else None  # --trial N: the user chose it
    if left_out:
        console.print(left_out, markup=False)
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
    run, objective_cls = load_run(args.run, args.overrides)
    console = _common.console(args)
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


def _export_arguments(p):
    _common.add_study_arguments(p)
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
    _common.add_overrides(p, "override a field, e.g. --set budget.max_steps=500 --set merge_validation=true")
    p.add_argument("--force", action="store_true", help="overwrite an existing adapter in the output directory")


EXPORT = _common.Command("export", "write winner.yaml, training_args.json, adapter_config.json", _export_arguments,
                         cmd_export)
TRAIN = _common.Command("train", "final fit of an exported winner.yaml", _train_arguments, cmd_train)
