"""`ftsweep replay STUDY`: which sampler and pruner to use next time, simulated on the study's own curves."""

from __future__ import annotations

import argparse
import json
import math

from rich.table import Table

from ..results.replay import DEFAULT_STRATEGIES, CurveTable, Strategy, compare
from ..results.tables import format_value
from . import _common


def cmd_replay(args: argparse.Namespace) -> int:
    """Simulate samplers and pruners (or pausing schedulers) on a finished study's full learning curves, many seeds
    each, and print for each the training steps it spent, the steps it needed to reach the study's best within
    --tolerance, and whether the best configuration survived it (search/results/replay.py says how)."""
    study = _common.study_of(args)
    table = CurveTable.from_study(study)
    strategies = [Strategy.parse(text) for text in (args.strategy or DEFAULT_STRATEGIES)]
    n_trials = args.trials or len(table.params)
    summaries = compare(table, strategies, seeds=args.seeds, n_trials=n_trials, tolerance=args.tolerance)
    rows = [{"strategy": s.strategy, "steps": s.steps, "steps_to_target": _finite(s.to_target),
             "steps_to_target_iqr": [_finite(v) for v in s.to_target_iqr], "reached": s.reached,
             "winner_kept": s.winner_kept} for s in summaries]
    if args.json:
        print(json.dumps({"study": study.study_name, "configurations": len(table.params), "trials": n_trials,
                          "seeds": args.seeds, "tolerance": args.tolerance, "target": table.target(args.tolerance),
                          "strategies": rows}, indent=2))
        return 0
    console = _common.console(args)
    out = Table(title=f"Replay of '{study.study_name}': {len(table.params)} full curves, {n_trials} trials per sweep, "
                      f"{args.seeds} seeds; target {format_value(table.target(args.tolerance))} "
                      f"(best {format_value(table.best()[1])} within {args.tolerance:.0%})")
    for name in ("strategy", "steps", "steps to target (IQR)", "reached", "winner kept"):
        out.add_column(name, justify="left" if name == "strategy" else "right")
    for s in summaries:
        low, high = s.to_target_iqr
        out.add_row(s.strategy, f"{s.steps:.0f}", f"{_steps(s.to_target)} ({_steps(low)}–{_steps(high)})",
                    f"{s.reached:.0%}", "—" if s.winner_kept is None else f"{s.winner_kept:.0%}")
    console.print(out)
    best = summaries[0]
    if math.isfinite(best.to_target):
        console.print(f"Fewest steps to the target: {best.strategy} (median {best.to_target:.0f} steps).")
    else:
        console.print("No strategy reached the target in half the seeds: more trials (--trials) or a looser "
                      "--tolerance.")
    return 0


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _steps(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "never"


def _replay_arguments(p: argparse.ArgumentParser) -> None:
    _common.add_study_arguments(p)
    p.add_argument("--strategy", action="append", metavar="SAMPLER+PRUNER[:arg=value,...]",
                   help="a strategy to simulate, repeatable (default: " + ", ".join(DEFAULT_STRATEGIES) + ")")
    p.add_argument("--seeds", type=int, default=20, help="simulated sweeps per strategy (default 20)")
    p.add_argument("--trials", type=int, help="configurations per simulated sweep (default: the table's size)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="relative distance to the best final value that counts as reached (default 0.01)")
    _common.add_json_flag(p)


REPLAY = _common.Command("replay", "simulate samplers × pruners on the study's full curves", _replay_arguments,
                         cmd_replay)
