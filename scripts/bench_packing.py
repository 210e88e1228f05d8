"""Packed trials: trials per hour and time-to-target with K = 1, 2, 4, 8 trials trained at once per worker.

    python scripts/bench_packing.py [--seeds 5] [--slots 1,2,4,8] [--timeout 20]
    python scripts/bench_packing.py --quick      # one seed, a few 4-step trials (what the test runs)
    python scripts/bench_packing.py --per-trial  # seconds per trial in one process: alone vs packed, K = 1..8 (~2 min)

The sweep of scripts/bench_pruning.py (its space, data, 40-step budget and reference target: its cached
reference sweep, or one run now) through the real `ftsweep launch` path (scripts/_bench_common.py) with
`pack: {slots: K}`, each K with and without pruning (ftsweep's default median pruner, and `none`), each run
a child forked from this process once the imports every run needs are done (`_bench_common.run_forked`: the
imports cost about 6.6 s of each run on 2 cores and are the same for every K, so they are measured once, in a
fresh interpreter, and added to the times from spawn), the strategies rotated per seed. A run stops after the
first completed trial at or below the target, or after --timeout seconds of sweep (no new trial starts after it).

    trials/hour     finished trials over the span from the first trial's start to the last one's end
    time-to-target  seconds from spawning the process to the end of the first trial at the target
    start-up        seconds from spawning the process to the first trial's start (imports, data, model)
    set-up          the part of start-up after the imports (sweep file, checks, data, model)
    peak RSS        of the process

Medians over seeds. The last line compares the best K (by trials per hour, with pruning) with K = 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402
import bench_pruning  # noqa: E402

REPO_ROOT = common.REPO_ROOT


def trials_per_hour(result: dict) -> float:
    trials = result["trials"]
    span = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    return 3600 * len(trials) / span if span > 0 else float("nan")


def per_trial(slots: list[int], repeats: int = 2, budget: dict | None = None, dataset: dict | None = None) -> dict:
    """Seconds per trial in this process, the objective set up once: `Objective.run_trial` alone against
    `run_packed` with K slots running 2K trials (each slot backfilled once), for the same params (the demo
    space's, dropout 0.05). What is left of packing once start-up and the sampler are out of the picture."""
    import time

    from objectives.engine.packed import run_packed

    objective = common._objective({"dataset": dataset or common.DATASET, "budget": budget or common.BUDGET})
    params = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "learning_rate": 3e-3,
              "lr_scheduler_type": "linear", "warmup_ratio": 0.1, "weight_decay": 0.01, "target_modules": "attention_qv"}
    objective.run_trial(params)  # warm-up
    seconds: dict[str, list[float]] = {"alone": [], **{f"K={k}": [] for k in slots}}
    for _ in range(repeats):
        started = time.perf_counter()
        objective.run_trial(params)
        seconds["alone"].append(time.perf_counter() - started)
        for k in slots:
            queue = [dict(params) for _ in range(k)]
            started = time.perf_counter()
            results = run_packed(objective, [dict(params) for _ in range(k)],
                                 next_params=lambda: queue.pop() if queue else None)
            seconds[f"K={k}"].append((time.perf_counter() - started) / len(results))
    print("| run | seconds per trial (each repeat) |\n|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {', '.join(f'{v:.3f}' for v in values)} |")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--slots", default="1,2,4,8", help="pack sizes to compare (default 1,2,4,8)")
    parser.add_argument("--trials", type=int, default=60, help="trial cap per run (default 60)")
    parser.add_argument("--timeout", type=float, default=20, help="seconds of sweep per run (default 20)")
    parser.add_argument("--reference-trials", type=int, default=40)
    parser.add_argument("--reference-seed", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "runs" / "bench" / "pruning_reference.json")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--quick", action="store_true", help="1 seed, 4 trials of 4 steps, tolerance 1: a smoke run")
    parser.add_argument("--per-trial", action="store_true", help="only seconds per trial in one process, alone vs packed")
    args = parser.parse_args(argv)
    budget, dataset = common.BUDGET, common.DATASET
    slots = [int(k) for k in args.slots.split(",")]
    if args.per_trial:
        if args.quick:
            return per_trial(slots, repeats=1, budget=common.QUICK_BUDGET, dataset=common.QUICK_DATASET)
        return per_trial(slots)
    if args.quick:
        budget, dataset = common.QUICK_BUDGET, common.QUICK_DATASET
        args.seeds, args.trials, args.reference_trials, args.tolerance = 1, 4, 3, 1.0
        args.cache = Path(args.cache).with_name("packing_quick_reference.json")
    say = lambda text: print(text, flush=True)  # noqa: E731
    ref = bench_pruning.reference(args, budget, dataset, say=say)
    target = ref["best"] * (1 + args.tolerance)
    say(f"Target: eval_loss <= {target:.4f}; {args.seeds} seeds, K = {slots}, timeout {args.timeout:.0f} s per run")
    imports = common.import_seconds()
    say(f"Imports (fresh interpreter, median of 3): {imports:.1f} s, added to every run's times from spawn")
    strategies = [(k, pruner) for k in slots for pruner in ("median", "none")]
    runs: dict[tuple[int, str], list[dict]] = {s: [] for s in strategies}
    for seed in range(args.seeds):
        for k, pruner in common.rotated(strategies, seed):
            result = common.run_forked({"side": "ftsweep", "n_trials": args.trials, "seed": seed, "budget": budget,
                                        "dataset": dataset, "pruner": {"name": pruner}, "stop_below": target,
                                        "timeout": args.timeout, "pack": k})
            result["setup_s"] = min(t["start"] for t in result["trials"])
            for trial in result["trials"]:  # times from spawning a fresh interpreter: the imports included
                trial["start"] += imports
                trial["end"] += imports
            runs[(k, pruner)].append(result)
            ttt = common.time_to_target(result, target)
            say(f"  seed {seed} K={k} {pruner:>6}: {bench_pruning._fmt(ttt)} s to target, {len(result['trials'])} "
                f"trials, {trials_per_hour(result):.0f} trials/h, start-up {min(t['start'] for t in result['trials']):.1f} s")

    rows = {}
    print("\n| K | pruner | trials/hour | time-to-target s (median) | reached | start-up s | set-up s | peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for (k, pruner), results in runs.items():
        ttt = [common.time_to_target(r, target) for r in results]
        row = {"trials_per_hour": statistics.median(trials_per_hour(r) for r in results),
               "time_to_target": common.quartiles(ttt)[1], "reached": sum(t != float("inf") for t in ttt),
               "startup_s": statistics.median(min(t["start"] for t in r["trials"]) for r in results),
               "setup_s": statistics.median(r["setup_s"] for r in results),
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results)}
        rows[(k, pruner)] = row
        print(f"| {k} | {pruner} | {row['trials_per_hour']:.0f} | {bench_pruning._fmt(row['time_to_target'])} | "
              f"{row['reached']}/{len(results)} | {row['startup_s']:.1f} | {row['setup_s']:.1f} | {row['peak_rss_mb']:.0f} |")
    print(f"\nMachine: {common.machine()}\nDate: {dt.date.today().isoformat()}")
    best = max(slots, key=lambda k: rows[(k, "median")]["trials_per_hour"])
    base, top = rows[(1, "median")], rows[(best, "median")]
    ratio_ttt = top["time_to_target"] / base["time_to_target"] if base["time_to_target"] not in (0, float("inf")) \
        else float("nan")
    print(f"packed K={best} / K=1: trials per hour {top['trials_per_hour'] / base['trials_per_hour']:.2f}, "
          f"time to target {ratio_ttt:.2f}")
    return {"target": target, "rows": {f"K={k} {p}": r for (k, p), r in rows.items()}, "best": best}


if __name__ == "__main__":
    main()
