"""ftsweep vs `Trainer.hyperparameter_search(backend="optuna")` vs a bare loop: the same sweep, side by side.

    python scripts/bench_vs_hf.py [--trials 8] [--repeats 3] [--scenarios unpruned,pruned] [--json out.json]
    python scripts/bench_vs_hf.py --quick          # a few trials of a few steps (what the test runs)
    python scripts/bench_vs_hf.py --variants --scenarios unpruned   # + ftsweep on SQLite / with gc.freeze per trial /
                                                                    # checkpointing at every evaluation

The three sides and what each child process measures are described in scripts/_bench_common.py:
ftsweep's real launch path with its defaults, the usual HF recipe (`model_init` builds the PEFT model
from the trial, so the base model is loaded from disk for every trial), and a bare torch loop on a
model loaded once. Same data (tokenized by ftsweep's objective), same collator and TrainingArguments,
same space, same seeded TPE sampler: for one seed every side trains the same configs in the same order.

Scenarios
    unpruned  no pruner on any side (Optuna's NopPruner passed explicitly): equal work.
    pruned    each side's default pruner: ftsweep's `median` and HF's, which is no `pruner=` argument
              at all -- `optuna.create_study` then uses `MedianPruner()`, the same pruner as ftsweep's.
              The bare loop uses `MedianPruner()` too.

Each repetition runs every side once, each in a fresh interpreter, in a rotated order (ftsweep, hf,
bare; then hf, bare, ftsweep; ...), so drift and caches hit every side alike; repetition r seeds the
sampler with r on every side (the validation split, adapter init and training seed stay 0, so losses
compare across repetitions). Figures per side are medians over the repetitions:

    sweep     seconds from spawning the process to the end of the sweep: imports, data, every trial
    trials    first trial start -> last trial end (the study record); per trial = that / n_trials
    overhead  per trial: (trials − time inside training steps − time inside evaluation loops) / n,
              in seconds and as % of the trials' wall time
    rss       peak resident memory of the process (MiB)
    best      best final eval_loss of a completed trial
Ratios are medians of the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

# name -> (label, child side, extra child config). The variants (--variants) are diagnostics: ftsweep
# on the storage it used to default to, and with a change the overhead analysis in docs/benchmarks.md
# measured but did not adopt, applied from outside.
SIDES = {
    "ftsweep": ("ftsweep (defaults)", "ftsweep", {}),
    "hf": ("HF hyperparameter_search", "hf", {}),
    "bare": ("bare loop", "bare", {}),
}
VARIANTS = {
    "ftsweep-sqlite": ("ftsweep, SQLite storage (the default before 2026-11-24)", "ftsweep",
                       {"storage": "sqlite:///{workdir}/bench.db"}),
    "ftsweep-refreeze": ("ftsweep + gc.freeze() after each trial", "ftsweep",
                         {"objective": "_bench_common:RefreezeObjective"}),
    # What a resumable checkpoint at every evaluation costs (the default waits 1 s between them).
    "ftsweep-checkpoint-every-eval": ("ftsweep, a checkpoint at every evaluation", "ftsweep",
                                      {"retries": {"checkpoint_interval_s": 0}}),
}
PRUNERS = {  # scenario -> child side -> pruner
    "unpruned": {"ftsweep": {"name": "none"}, "hf": {"name": "none"}, "bare": {"name": "none"}},
    "pruned": {"ftsweep": {"name": "median"}, "hf": "default", "bare": {"name": "median"}},
}
TARGETS = {"ftsweep/hf": 0.9, "ftsweep/bare": 1.05, "overhead_pct": 5.0}


def run_scenario(scenario: str, sides: dict[str, tuple], *, trials: int, repeats: int, budget: dict,
                 dataset: dict, say=print) -> dict[str, list[dict]]:
    """Every side `repeats` times, rotated; returns side name -> list of per-run summaries."""
    names = list(sides)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in common.rotated(names, rep):
            _, side, extra = sides[name]
            config = {"side": side, "n_trials": trials, "seed": rep, "budget": budget, "dataset": dataset,
                      "pruner": PRUNERS[scenario][side], **extra}
            summary = common.summarize(common.run_side(config))
            runs[name].append(summary)
            say(f"  {scenario} rep {rep + 1}/{repeats} {name:>24}: sweep {summary['sweep_s']:6.2f}s, "
                f"trials {summary['trial_s'] * trials:6.2f}s, {summary['complete']} complete "
                f"{summary['pruned']} pruned, best {summary['best']:.4f}")
    return runs


def table(scenario: str, sides: dict[str, tuple], runs: dict[str, list[dict]], trials: int) -> tuple[str, dict]:
    """The markdown table of one scenario and its ratios."""
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def ratio(a: str, b: str, key: str) -> float:  # paired: repetition by repetition
        return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b]))

    lines = [
        f"{scenario}: {trials} trials per sweep, medians of {len(runs['ftsweep'])} repetitions",
        ("| side | sweep s | sweep / hf | sweep / bare | trials s | trials / hf | per trial s | overhead s/trial "
         "| overhead % | peak RSS MiB | best eval_loss | complete / pruned |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (label, _, _) in sides.items():
        lines.append(
            f"| {label} | {med(name, 'sweep_s'):.2f} | {ratio(name, 'hf', 'sweep_s'):.3f} "
            f"| {ratio(name, 'bare', 'sweep_s'):.3f} | {med(name, 'trial_s') * trials:.2f} "
            f"| {ratio(name, 'hf', 'trial_s'):.3f} | {med(name, 'trial_s'):.3f} | {med(name, 'overhead_s'):.3f} "
            f"| {med(name, 'overhead_pct'):.1f} | {med(name, 'peak_rss_mb'):.0f} | {med(name, 'best'):.4f} "
            f"| {med(name, 'complete'):.0f} / {med(name, 'pruned'):.0f} |")
    ratios = {
        "ftsweep/hf": ratio("ftsweep", "hf", "sweep_s"),
        "ftsweep/hf trials": ratio("ftsweep", "hf", "trial_s"),
        "ftsweep/bare": ratio("ftsweep", "bare", "sweep_s"),
        "ftsweep/bare trials": ratio("ftsweep", "bare", "trial_s"),
        "overhead_pct": med("ftsweep", "overhead_pct"),
    }
    lines.append(
        f"ftsweep / hf: sweep {ratios['ftsweep/hf']:.3f}, trials {ratios['ftsweep/hf trials']:.3f}; "
        f"ftsweep / bare: sweep {ratios['ftsweep/bare']:.3f}, trials {ratios['ftsweep/bare trials']:.3f}")
    lines.append("best eval_loss per repetition (ftsweep / hf / bare): " + "; ".join(
        f"{f['best']:.4f} / {h['best']:.4f} / {b['best']:.4f}"
        for f, h, b in zip(runs["ftsweep"], runs["hf"], runs["bare"])))
    return "\n".join(lines), ratios


def verdicts(results: dict[str, dict]) -> list[str]:
    """One line per target of issue 7 that this script measures."""
    out = []
    if "unpruned" in results:
        r = results["unpruned"]
        for key, text in (("ftsweep/hf", "equal work, ftsweep / HF sweep wall"),
                          ("ftsweep/bare", "equal work, ftsweep / bare loop sweep wall")):
            out.append(f"{text} = {r[key]:.3f} (target <= {TARGETS[key]}): "
                       f"{'met' if r[key] <= TARGETS[key] else 'NOT met'}")
    for scenario, r in results.items():
        out.append(f"{scenario}: ftsweep per-trial overhead = {r['overhead_pct']:.1f}% of trial time "
                   f"(target <= {TARGETS['overhead_pct']}%): "
                   f"{'met' if r['overhead_pct'] <= TARGETS['overhead_pct'] else 'NOT met'}")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every side (default 3)")
    parser.add_argument("--scenarios", default="unpruned,pruned", help="comma-separated: unpruned, pruned")
    parser.add_argument("--variants", action="store_true",
                        help="also run ftsweep on a SQLite storage, and with gc.freeze() after each trial "
                        "(diagnostics: what the per-trial overhead is made of)")
    parser.add_argument("--quick", action="store_true", help="3 trials of 4 steps, 1 repetition: a smoke run")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    budget, dataset = common.BUDGET, common.DATASET
    if args.quick:
        budget, dataset, args.trials, args.repeats = common.QUICK_BUDGET, common.QUICK_DATASET, 3, 1
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(PRUNERS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {sorted(PRUNERS)}")

    print(f"Sweep: causal_lm on {common.MODEL}, {args.trials} trials x {budget['max_steps']} steps "
          f"(eval every {budget['eval_every']}, batch {budget['batch_size']}, seq {budget['max_seq_length']}, "
          f"{dataset['max_eval_examples']} eval examples), TPE seeded, {args.repeats} repetition(s)", flush=True)
    sides = {**SIDES, **(VARIANTS if args.variants else {})}
    all_runs, ratios, tables = {}, {}, []
    for scenario in scenarios:
        runs = run_scenario(scenario, sides, trials=args.trials, repeats=args.repeats, budget=budget,
                            dataset=dataset, say=lambda text: print(text, flush=True))
        text, ratios[scenario] = table(scenario, sides, runs, args.trials)
        all_runs[scenario] = runs
        tables.append(text)
    print()
    print("\n\n".join(tables))
    print()
    for line in verdicts(ratios):
        print(line)
    print(f"Machine: {common.machine()}")
    print(f"Date: {dt.date.today().isoformat()}")
    summary = {"budget": budget, "dataset": dataset, "trials": args.trials, "repeats": args.repeats,
               "runs": all_runs, "ratios": ratios}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
