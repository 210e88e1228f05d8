"""`ftsweep gate`: exit 0 only if a candidate beats the champion on the same held-out test set (CI/CD)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..aftersweep.gate import gate, render
from . import _common


def _gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidate", required=True, metavar="RUN",
                   help="a `ftsweep train` output directory, or a winner.yaml (trained first with its own settings)")
    p.add_argument("--champion", required=True, metavar="RUN", help="the run in production: the same kinds")
    p.add_argument("--metric", help="what decides (default: the candidate's sweep metric, else eval_loss); "
                   "test_loss / test_NAME are accepted for eval_loss / NAME")
    p.add_argument("--direction", choices=["minimize", "maximize"],
                   help="default: the sweep's direction for its metric, else the metric's natural one")
    how_much = p.add_mutually_exclusive_group()
    how_much.add_argument("--margin", type=float, default=0.0,
                          help="absolute improvement the candidate must exceed (default 0: strictly better)")
    how_much.add_argument("--relative-margin", type=float, metavar="FRACTION",
                          help="improvement as a share of the champion's value, e.g. 0.02 for 2%%")
    p.add_argument("--max-metric", action="append", default=[], metavar="NAME=VALUE",
                   help="the candidate's NAME must be <= VALUE (repeatable), e.g. latency_ms=20")
    p.add_argument("--min-metric", action="append", default=[], metavar="NAME=VALUE",
                   help="the candidate's NAME must be >= VALUE (repeatable), e.g. accuracy=0.8")
    p.add_argument("--out", metavar="FILE", help="write the verdict as JSON (metrics, test-set fingerprint, decision, reasons)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="where a winner.yaml side is trained (DIR/candidate, DIR/champion); default a temporary directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a field of a candidate winner.yaml before it is trained, e.g. --set seed=0")
    p.add_argument("--max-seq-length", type=int, metavar="N",
                   help="truncation for both evaluations (default the larger of the two runs')")


def cmd_gate(args: argparse.Namespace) -> int:
    """Exit 0 only when the candidate beats the champion on the same held-out test set (CI/CD gate)."""
    verdict = gate(args.candidate, args.champion, metric=args.metric, direction=args.direction, margin=args.margin,
                   relative_margin=args.relative_margin, max_metrics=args.max_metric, min_metrics=args.min_metric,
                   work_dir=args.work_dir, overrides=args.overrides, max_seq_length=args.max_seq_length)
    console = _common.console(args)
    console.print(render(verdict))
    for reason in verdict.reasons:
        console.print(f"  {reason}", markup=False)
    for note in verdict.notes:
        console.print(f"[yellow]note:[/] {note}")
    if args.out:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(verdict.to_dict(), indent=2) + "\n")
        console.print(f"Verdict: {out}")
    console.print("[bold green]PASS[/]: promote the candidate" if verdict.passed
                  else "[bold red]FAIL[/]: keep the champion")
    return verdict.exit_code


GATE = _common.Command("gate", "exit 0 only if a candidate beats the champion on the same held-out test set",
                       _gate_arguments, cmd_gate)
