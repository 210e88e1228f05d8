"""Which search strategy reaches a good configuration in the fewest training steps: simulated on recorded curves.

    python scripts/bench_search.py                  # tables cached after the first run; 100 seeds per strategy
    python scripts/bench_search.py --quick          # 12 configurations of 8 steps, 5 seeds: a smoke run (the test)
    python scripts/bench_search.py --no-wall        # the simulations only

1. Two tables of full learning curves, recorded once with ftsweep itself (random sampler, `pruner: none`, two
   worker processes) and cached: the study in <cache>/<task>/ is the cache, and a run with other settings is
   another study. `demo`: causal_lm, the bundled tiny support LM on support-qa, eval_loss, the space of the other
   benchmarks (scripts/_bench_common.py SPACE: 7 params), 40 steps evaluated every 5. `intents`: sequence
   classification of support intents, macro F1, learning rate / rank / alpha ratio / weight decay / label
   smoothing / warmup, 40 steps evaluated every 5.
2. On each table, every strategy runs `--seeds` simulated sweeps (search/results/replay.py: real Optuna samplers,
   pruners and ftsweep's pausing schedulers, a configuration the table lacks gets its nearest neighbour's curve),
   each stopping when a trial *completes* within `--tolerance` of the table's best final value, or after as many
   trials as the table has configurations. Reported: the median steps to that target and its inter-quartile
   range (a seed that never got there counts as infinitely many steps), and the ratios of medians.
3. Wall clock on real runs (`--wall-seeds`, demo task, skipped with --no-wall): ftsweep's default strategy against
   `Trainer.hyperparameter_search`'s default (TPE + Optuna's MedianPruner, scripts/_bench_common.py `hf`), each
   run stopping at a target or after `--wall-timeout` seconds; the median over seeds of the per-seed ratio of
   seconds to target. The target is within `--tolerance` of the demo table's `--wall-rank`-th best final value
   (10th of 216 by default: the top 5 %): the table's very best is one configuration in 216, which a real sweep
   of a few minutes finds by chance or not at all, on either side.

The strategies: `random+none` (random search, no pruning), `tpe+median` (Optuna's defaults; in the simulation
this is also what HF's hyperparameter_search runs by default), the stop-only rungs, the pausing schedulers, and
`default` = whatever a sweep file without `sampler:`/`pruner:` gets (search/settings.py).

The last line: `search: default/random <x>, default/tpe+median <y>, wall default/HF <z>` (ratios of medians).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

REPO_ROOT = common.REPO_ROOT
# Random search without pruning; TPE alone; Optuna's defaults (TPE + MedianPruner(), which is also what HF's
# hyperparameter_search runs by default); the stop-only rungs; the pausing schedulers with their own defaults; the
# risk-bounded rule calibrated on the sweep's own completed curves.
# The default strategy (default_strategy()) is added to these.
STRATEGIES = ["random+none", "tpe+none", "tpe+median", "tpe+successive_halving", "tpe+hyperband",
              "tpe+asha_promote", "tpe+hyperband_promote", "tpe+curve_promote", "tpe+risk"]

INTENTS_SPACE = {"params": {
    "learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
    "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
    "lora_alpha_ratio": {"type": "categorical", "choices": [1, 2, 4]},
    "lora_alpha": {"type": "derived", "from": "lora_r", "times": "lora_alpha_ratio", "as": "int"},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "label_smoothing_factor": {"type": "categorical", "choices": [0.0, 0.1]},
}}


def task_sweeps(configs: int, quick: bool) -> dict[str, dict]:
    budget = {"max_steps": 8, "eval_every": 2, "batch_size": 4, "max_seq_length": 64} if quick else \
        {"max_steps": 40, "eval_every": 5, "batch_size": 16, "max_seq_length": 64}
    common_keys = {"sampler": {"name": "random"}, "pruner": "none", "n_trials": configs, "budget": budget,
                   "seed": common.DATA_SEED, "tracking": {"wandb": "off"}}
    return {
        "demo": {"objective": "causal_lm", "model": common.MODEL,
                 "dataset": common.QUICK_DATASET if quick else common.DATASET, "space": common.SPACE,
                 "metric": "eval_loss", **common_keys},
        "intents": {"objective": "sequence_classification", "model": common.MODEL,
                    "dataset": {"source": "bundled:support-intents", "max_eval_examples": 64 if quick else 200,
                                **({"max_train_examples": 128} if quick else {})},
                    "space": INTENTS_SPACE, "metric": "f1_macro", **common_keys},
    }


def record_table(name: str, sweep: dict, cache: Path, workers: int, say=print):
    """The task's study of full curves: resumed from the cache (a study per settings), run where missing."""
    import hashlib

    import optuna
    import yaml

    from search.results.replay import CurveTable
    from search.store.storage import load_existing_study

    key = hashlib.sha256(json.dumps(sweep, sort_keys=True).encode()).hexdigest()[:10]
    study_name = f"{name}-{key}"
    folder = cache / study_name
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"journal:///{(folder / 'study.journal').resolve()}"
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": study_name, **sweep, "output_dir": str(folder / "runs"),
                                    "storage": storage}, sort_keys=False))
    try:
        study = load_existing_study(study_name, storage)
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    except Exception:  # noqa: BLE001 - no study yet
        done = 0
    if done < sweep["n_trials"]:
        say(f"{name}: recording {sweep['n_trials'] - done} more configurations ({workers} workers) in {folder} …")
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "search.cli", "launch", str(path), "--workers", str(workers)],
                       cwd=REPO_ROOT, check=True, capture_output=True, text=True)
        say(f"{name}: recorded in {time.monotonic() - started:.0f} s")
    return CurveTable.from_study(load_existing_study(study_name, storage))


def _simulate(job):
    from search.results.replay import Strategy, compare

    table, strategy, seeds, trials, tolerance = job
    [summary] = compare(table, [Strategy.parse(strategy)], seeds=seeds, n_trials=trials, tolerance=tolerance,
                        stop_at_target=True)
    return strategy, summary


def default_strategy() -> str:
    """The sampler and pruner a single-metric Optuna sweep file that names neither gets (search/sweep.py)."""
    from search.settings import SweepSpec
    from search.sweep import default_pruner

    spec = SweepSpec(name="s", objective="causal_lm", model="m", dataset="d", space="lora")
    sampler, pruner = spec.sampler, default_pruner(spec)
    args = ",".join(f"{k}={v}" for k, v in pruner.args.items())
    return f"{sampler.name}+{pruner.name}" + (f":{args}" if args else "")


def simulate_all(tables: dict, strategies: list[str], *, seeds: int, tolerance: float, processes: int, say=print):
    jobs = [(name, (table, strategy, seeds, len(table.params), tolerance))
            for name, table in tables.items() for strategy in strategies]
    results: dict[str, dict] = {name: {} for name in tables}
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for (name, _), (strategy, summary) in zip(jobs, pool.imap(_simulate, [job for _, job in jobs])):
            results[name][strategy] = summary
            low, high = summary.to_target_iqr
            say(f"  {name:8} {strategy:26} steps to target {_fmt(summary.to_target):>6} (IQR {_fmt(low)}–{_fmt(high)}),"
                f" reached {summary.reached:.0%}")
    return results


def wall_clock(target: float, seeds: int, default: str, timeout: float, say=print) -> float:
    """Median over seeds of (ftsweep default's seconds to target) / (HF default's), real runs of the demo task."""
    from search.results.replay import Strategy

    pruner = Strategy.parse(default).pruner
    budget = {"max_steps": 40, "eval_every": 5, "batch_size": 16, "max_seq_length": 64}
    ratios = []
    for seed in range(seeds):
        times = {}
        for side in common.rotated(["ftsweep", "hf"], seed):
            config = {"side": side, "n_trials": 80, "seed": seed, "budget": budget, "dataset": common.DATASET,
                      "pruner": {"name": pruner.name, "args": dict(pruner.args)} if side == "ftsweep" else "default",
                      "stop_below": target, "timeout": timeout}
            result = common.run_side(config)
            times[side] = common.time_to_target(result, target)
            say(f"  wall seed {seed} {side:8}: {_fmt(times[side])} s to target, {len(result['trials'])} trials")
        if not (math.isinf(times["ftsweep"]) and math.isinf(times["hf"])):
            ratios.append(times["ftsweep"] / times["hf"])
    return statistics.median(ratios) if ratios else math.nan


def _fmt(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.0f}"


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b else (0.0 if math.isfinite(a) else math.inf)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=216, help="configurations recorded per task (default 216)")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "runs" / "bench" / "search")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wall-seeds", type=int, default=7)
    parser.add_argument("--wall-rank", type=int, default=10)
    parser.add_argument("--wall-timeout", type=float, default=150.0)
    parser.add_argument("--no-wall", action="store_true")
    parser.add_argument("--no-sim", action="store_true", help="the wall-clock comparison only")
    parser.add_argument("--quick", action="store_true", help="12 configurations of 8 steps, 5 seeds, no wall clock")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.seeds, args.no_wall = 12, 5, True
    started = time.monotonic()
    default = default_strategy()
    strategies = list(dict.fromkeys([*STRATEGIES, default]))
    print(common.machine())
    tables = {name: record_table(name, sweep, args.cache, args.workers)
              for name, sweep in task_sweeps(args.configs, args.quick).items()}
    for name, table in tables.items():
        print(f"{name}: {len(table.params)} full curves of {table.max_steps} steps; best {table.best()[1]:.4f}, "
              f"target {table.target(args.tolerance):.4f}")
    if args.no_sim:
        strategies = []
    results = simulate_all(tables, strategies, seeds=args.seeds, tolerance=args.tolerance,
                           processes=max(1, min(2, multiprocessing.cpu_count())))
    print(f"\nMedian steps to within {args.tolerance:.0%} of each table's best ({args.seeds} seeds; IQR; reached):\n")
    print("| strategy | " + " | ".join(f"{name} steps | {name} IQR | {name} reached" for name in tables) + " |")
    print("|---|" + "---:|---:|---:|" * len(tables))
    for strategy in strategies:
        cells = []
        for name in tables:
            s = results[name][strategy]
            cells += [_fmt(s.to_target), f"{_fmt(s.to_target_iqr[0])}–{_fmt(s.to_target_iqr[1])}", f"{s.reached:.0%}"]
        label = f"{strategy} (default)" if strategy == default else strategy
        print(f"| {label} | " + " | ".join(cells) + " |")
    ratios = {name: {"default/random": _ratio(results[name][default].to_target, results[name]["random+none"].to_target),
                     "default/tpe+median": _ratio(results[name][default].to_target,
                                                  results[name]["tpe+median"].to_target)}
              for name in tables if strategies}
    print()
    for name, r in ratios.items():
        median_reached = results[name]["tpe+median"].reached
        note = (f" (tpe+median reached the target in {median_reached:.0%} of the seeds: its median is 'never')"
                if not math.isfinite(results[name]["tpe+median"].to_target) else "")
        print(f"{name}: default/random {r['default/random']:.2f} (target ≤ 0.33), "
              f"default/tpe+median {r['default/tpe+median']:.2f} (target ≤ 0.50){note}")
    wall = math.nan
    if not args.no_wall:
        demo = tables["demo"]
        finals = sorted(demo.finals, reverse=not demo.minimize)
        reference = finals[min(args.wall_rank, len(finals)) - 1]
        target = reference + abs(reference) * args.tolerance if demo.minimize else reference - abs(reference) * args.tolerance
        print(f"\nWall clock on real runs, demo task, target {target:.4f} (within {args.tolerance:.0%} of the "
              f"table's {args.wall_rank}th best, {reference:.4f}):")
        wall = wall_clock(target, args.wall_seeds, default, args.wall_timeout)
    elapsed = time.monotonic() - started
    print(f"\nelapsed {elapsed:.0f} s")
    worst = {key: max((r[key] for r in ratios.values()), default=math.nan)
             for key in ("default/random", "default/tpe+median")}
    figures = {"default": default, "ratios": ratios, "worst": worst, "wall_default_over_hf": wall,
               "elapsed_s": elapsed, "tables": {name: {"configs": len(t.params), "best": t.best()[1]}
                                                for name, t in tables.items()},
               "strategies": {name: {s: {"median": r.to_target, "iqr": list(r.to_target_iqr), "reached": r.reached}
                                     for s, r in per.items()} for name, per in results.items()}}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    # The worse of the two tables for each ratio: the targets hold on both or not at all.
    print(f"search: default/random {worst['default/random']:.2f}, default/tpe+median {worst['default/tpe+median']:.2f}, "
          f"wall default/HF {wall:.2f}")
    return figures


if __name__ == "__main__":
    main()
