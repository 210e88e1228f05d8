"""Time-to-target: wall time until a sweep first finds a config within 1% of a reference best eval loss.

    python scripts/bench_pruning.py [--seeds 5] [--trials 60] [--timeout 45] [--png runs/bench/pruning_anytime.png]
    python scripts/bench_pruning.py --with-ray       # adds Ray ASHA (opt-in: ~3 min more, see below)
    python scripts/bench_pruning.py --quick          # a few trials of a few steps (what the test runs)

Reference
    A long unpruned ftsweep sweep (TPE, --reference-trials 40, sampler seed --reference-seed 1000) on
    the same space, data and per-trial budget; its best eval_loss is the reference and the target is
    reference x 1.01 (--tolerance). It is cached as JSON (--cache, default
    runs/bench/pruning_reference.json) under a key made of everything that changes it (model, data,
    budget, space, trials, seeds, library versions); a matching cache is reused, anything else is
    recomputed. Printed with it: how well early evaluations rank its trials like their final losses
    (what a pruner relies on).

Strategies (each a fresh interpreter; scripts/_bench_common.py says what every side runs)
    hf                 `Trainer.hyperparameter_search(backend="optuna")` as documented: TPE, no pruner
                       (`pruner=NopPruner()`: without a pruner argument Optuna would add MedianPruner())
    hf-median          HF with no pruner argument at all: `optuna.create_study` then adds MedianPruner(),
                       the same pruner as ftsweep's default (what HF really runs by default)
    ftsweep-tpe        ftsweep, TPE, `pruner: none`
    ftsweep-default    ftsweep with its defaults: TPE + `median` (Optuna's MedianPruner())
    ftsweep-sha        TPE + `successive_halving` (min_resource = eval_every)
    ftsweep-hyperband  TPE + `hyperband` (min_resource = eval_every, max_resource = max_steps)
    ray-asha           (--with-ray) ftsweep's Ray backend, `pruner: asha` (ASHAScheduler), Ray's defaults
                       (one trial per CPU: two at a time here); timed from the driver's study record.
                       Opt-in: a local Ray starts in every run and Tune's loop cannot be stopped at the
                       target, so 5 seeds add ~3 min to a default run of ~9.5 min on 2 cores.

Seed k seeds the sampler of every strategy (the validation split, adapter init and training seed are
the same everywhere, so every loss is measured on the same examples); strategies run in rotated
order per seed. A run stops after the first *completed* trial at or below the target (pruned trials
never count), or after --trials trials, or when --timeout seconds of sweep have passed (no new trial
starts after it). Ray runs do not stop at the target: their time-to-target is read from the study.

    time-to-target   seconds from spawning the process to the end of that trial (imports, data and
                     model set-up included: what a user waits for); "—" when a run never reached it
    median / IQR     over the seeds; a run that never reached the target counts as infinitely slow
    ratios           median over seeds of the per-seed ratio (paired: same seed on both sides)

The PNG plots each run's anytime curve (best completed eval_loss so far vs seconds since spawn),
thin per seed, thick the median over seeds up to where it reaches the target, with the target line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

REPO_ROOT = common.REPO_ROOT
STRATEGIES = {
    "hf": ("hf", {"name": "none"}, "HF hyperparameter_search: TPE, no pruner"),
    "ftsweep-tpe": ("ftsweep", {"name": "none"}, "ftsweep: TPE, no pruner"),
    "ftsweep-default": ("ftsweep", {"name": "median"}, "ftsweep defaults: TPE + median"),
    "ftsweep-sha": ("ftsweep", {"name": "successive_halving"}, "ftsweep: TPE + successive halving"),
    "ftsweep-hyperband": ("ftsweep", {"name": "hyperband"}, "ftsweep: TPE + hyperband"),
    "hf-median": ("hf", "default", "HF, no pruner argument (Optuna's MedianPruner)"),
    "ray-asha": ("ray", {"name": "asha"}, "ftsweep Ray backend: TPE + ASHA"),
}
DEFAULT_STRATEGIES = ["hf", "hf-median", "ftsweep-tpe", "ftsweep-default", "ftsweep-sha", "ftsweep-hyperband"]
TARGETS = {"ftsweep-default/hf": 1 / 3, "pruned/unpruned": 1 / 2}


def reference(args, budget: dict, dataset: dict, say=print) -> dict:
    """The reference sweep's best value: from the cache when its key matches, else run and cache it."""
    import importlib.metadata as md

    key_fields = {
        "model": common.MODEL, "dataset": dataset, "budget": budget, "space": common.SPACE,
        "trials": args.reference_trials, "seed": args.reference_seed, "data_seed": common.DATA_SEED,
        "versions": {p: md.version(p) for p in ("torch", "transformers", "peft", "optuna")},
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    cache = args.cache
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            say(f"Reference: {cached['best']:.4f} (cached in {cache}: {args.reference_trials} unpruned TPE trials, "
                f"seed {args.reference_seed})")
            return cached
    say(f"Reference: running {args.reference_trials} unpruned TPE trials (seed {args.reference_seed}); "
        f"cached in {cache} afterwards…")
    result = common.run_side({"side": "ftsweep", "n_trials": args.reference_trials, "seed": args.reference_seed,
                              "budget": budget, "dataset": dataset, "pruner": {"name": "none"}})
    complete = [t for t in result["trials"] if t["state"] == "complete"]
    best = min(complete, key=lambda t: t["value"])
    record = {"key": key, "fields": key_fields, "best": best["value"], "best_params": best["params"],
              "sweep_s": result["sweep_end"], "values": sorted(t["value"] for t in complete),
              "curves": [t["curve"] for t in complete], "date": dt.date.today().isoformat()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record, indent=1))
    say(f"Reference: {best['value']:.4f} (trial {best['number']}, sweep {result['sweep_end']:.0f} s)")
    return record


def early_rank_agreement(curves: list[dict[str, float]]) -> dict[int, float]:
    """Spearman correlation, over the reference's trials, of the eval_loss at each evaluation step with
    the final one: how well an early rung ranks trials the way their final losses do (1: perfectly)."""
    if len(curves) < 3:
        return {}
    final_step = max(int(k) for k in curves[0])
    finals = [c[str(final_step)] for c in curves]
    out = {}
    for step in sorted(int(k) for k in curves[0]):
        if step != final_step and all(str(step) in c for c in curves):
            out[step] = _spearman([c[str(step)] for c in curves], finals)
    return out


def early_survival(curves: list[dict[str, float]], target: float) -> dict[int, tuple[int, int, int]]:
    """Per early evaluation step: (reference trials that end at or below the target, how many of them
    rank in the top half of all trials at that step -- what a median rule keeps --, how many in the top
    quarter -- what successive halving with reduction factor 4 keeps at its first rung)."""
    if not curves:
        return {}
    final_step = max(int(k) for k in curves[0])
    hitters = [c for c in curves if c[str(final_step)] <= target]
    out = {}
    for step in sorted(int(k) for k in curves[0]):
        if step == final_step or not all(str(step) in c for c in curves):
            continue
        ordered = sorted(c[str(step)] for c in curves)
        half, quarter = ordered[(len(ordered) - 1) // 2], ordered[(len(ordered) - 1) // 4]
        out[step] = (len(hitters), sum(c[str(step)] <= half for c in hitters),
                     sum(c[str(step)] <= quarter for c in hitters))
    return out


def _spearman(a: list[float], b: list[float]) -> float:
    def rank(xs: list[float]) -> dict[int, int]:
        return {i: r for r, i in enumerate(sorted(range(len(xs)), key=xs.__getitem__))}

    ra, rb = rank(a), rank(b)
    n = len(a)
    return 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def run_all(strategies: list[str], *, seeds: int, trials: int, timeout: float, target: float, budget: dict,
            dataset: dict, say=print) -> dict[str, list[dict]]:
    """Every strategy once per seed, rotated; returns strategy -> list of raw child results."""
    runs: dict[str, list[dict]] = {name: [] for name in strategies}
    for seed in range(seeds):
        for name in common.rotated(strategies, seed):
            side, pruner, _ = STRATEGIES[name]
            config = {"side": side, "n_trials": trials, "seed": seed, "budget": budget, "dataset": dataset,
                      "pruner": pruner, "stop_below": target, "timeout": timeout}
            if side == "ray":
                config = {**config, "side": "ftsweep", "backend": "ray"}
            result = common.run_side(config)
            runs[name].append(result)
            ttt = common.time_to_target(result, target)
            states = [t["state"] for t in result["trials"]]
            say(f"  seed {seed} {name:>17}: {_fmt(ttt)} s to target, {len(states)} trials "
                f"({states.count('pruned')} pruned), sweep {result['sweep_end']:.1f} s")
    return runs


def _fmt(seconds: float) -> str:
    return "—" if math.isinf(seconds) else f"{seconds:.1f}"


def _paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over seeds of a/b; a run that never reached the target is inf (inf/inf: left out)."""
    ratios = [x / y for x, y in zip(a, b) if not (math.isinf(x) and math.isinf(y))]
    return statistics.median(ratios) if ratios else float("nan")


def table(runs: dict[str, list[dict]], target: float) -> tuple[str, dict]:
    lines = [
        ("| strategy | time-to-target median s | IQR s | reached | trials run (median) | pruned (median) "
         "| best eval_loss (median) |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ttt = {name: [common.time_to_target(r, target) for r in rs] for name, rs in runs.items()}
    for name, rs in runs.items():
        q1, median, q3 = common.quartiles(ttt[name])
        bests = [min((t["value"] for t in r["trials"] if t["state"] == "complete"), default=float("nan")) for r in rs]
        reached = sum(not math.isinf(v) for v in ttt[name])
        lines.append(
            f"| {STRATEGIES[name][2]} | {_fmt(median)} | {_fmt(q1)}–{_fmt(q3)} | {reached}/{len(rs)} "
            f"| {statistics.median(len(r['trials']) for r in rs):.0f} "
            f"| {statistics.median(sum(t['state'] == 'pruned' for t in r['trials']) for r in rs):.0f} "
            f"| {statistics.median(bests):.4f} |")
    ratios = {}
    if "hf" in ttt:
        for name, values in ttt.items():
            if name != "hf":
                ratios[f"{name}/hf"] = _paired_ratio(values, ttt["hf"])
    if "ftsweep-tpe" in ttt:
        for name in ("ftsweep-default", "ftsweep-sha", "ftsweep-hyperband", "ray-asha"):
            if name in ttt:
                ratios[f"{name}/ftsweep-tpe"] = _paired_ratio(ttt[name], ttt["ftsweep-tpe"])
    lines.append("Time-to-target ratios (median over seeds of the per-seed ratio): " + ", ".join(
        f"{k} {v:.3f}" for k, v in ratios.items()))
    lines.append("Per seed, seconds (— never reached): " + "; ".join(
        f"{name} " + " ".join(_fmt(v) for v in values) for name, values in ttt.items()))
    return "\n".join(lines), ratios


def verdicts(ratios: dict[str, float]) -> list[str]:
    out = []
    value = ratios.get("ftsweep-default/hf")
    if value is not None:
        out.append(f"time-to-target, ftsweep defaults / HF defaults = {value:.3f} (target <= 1/3): "
                   f"{'met' if value <= TARGETS['ftsweep-default/hf'] else 'NOT met'}")
    for name in ("ftsweep-sha", "ftsweep-hyperband"):
        value = ratios.get(f"{name}/ftsweep-tpe")
        if value is not None:
            out.append(f"time-to-target, {name} / unpruned TPE = {value:.3f} (target <= 1/2): "
                       f"{'met' if value <= TARGETS['pruned/unpruned'] else 'NOT met'}")
    return out


def plot(runs: dict[str, list[dict]], target: float, reference_best: float, path: Path) -> None:
    """Anytime curves: best completed eval_loss so far vs seconds since spawn, per seed and median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    horizon = max((t["end"] for rs in runs.values() for r in rs for t in r["trials"]), default=1.0)
    grid = [horizon * i / 300 for i in range(301)]
    for color, (name, rs) in zip(colors, runs.items()):
        curves = [common.anytime_curve(r) for r in rs]
        for curve in curves:
            if curve:
                xs, ys = zip(*curve)
                ax.step(xs, ys, where="post", color=color, alpha=0.25, linewidth=0.8)
        finite = []  # the median over seeds of best-so-far, up to where it reaches the target
        for x in grid:
            y = statistics.median(next((y for cx, y in reversed(c) if cx <= x), math.inf) for c in curves)
            if not math.isinf(y):
                finite.append((x, y))
            if y <= target:
                break
        if finite:
            xs, ys = zip(*finite)
            ax.step(xs, ys, where="post", color=color, linewidth=2.2, label=STRATEGIES[name][2])
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.4f}")
    ax.axhline(reference_best, color="grey", linestyle=":", linewidth=1, label=f"reference best {reference_best:.4f}")
    values = [y for rs in runs.values() for r in rs for _, y in common.anytime_curve(r)]
    if values:
        ax.set_ylim(min(values + [reference_best]) - 0.01, min(max(values), target + 0.25))
    ax.set_xlabel("seconds since the process started (imports and set-up included)")
    ax.set_ylabel("best completed eval_loss so far")
    ax.set_title("Anytime curves: thin = one seed (runs stop at the target), thick = median over seeds", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy (default 5)")
    parser.add_argument("--trials", type=int, default=60, help="trial cap per run (default 60)")
    parser.add_argument("--timeout", type=float, default=45,
                        help="seconds of sweep after which no new trial starts (default 45): the binding budget")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help=f"comma-separated, from {', '.join(STRATEGIES)}")
    parser.add_argument("--with-ray", action="store_true", help="add ray-asha (starts a local Ray per run)")
    parser.add_argument("--reference-trials", type=int, default=40)
    parser.add_argument("--reference-seed", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "runs" / "bench" / "pruning_reference.json")
    parser.add_argument("--png", type=Path, default=REPO_ROOT / "runs" / "bench" / "pruning_anytime.png")
    parser.add_argument("--tolerance", type=float, default=0.01, help="target = reference x (1 + this); 0.01")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 3 trials of 4 steps, a 3-trial reference, tolerance 1 (the first completed "
                        "trial reaches it): a smoke run of every code path")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.trials < 1:
        parser.error("--seeds and --trials must be at least 1")
    budget, dataset = common.BUDGET, common.DATASET
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.with_ray and "ray-asha" not in strategies:
        strategies.append("ray-asha")
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategy(ies) {unknown}; choose from {list(STRATEGIES)}")
    if args.quick:
        budget, dataset = common.QUICK_BUDGET, common.QUICK_DATASET
        args.seeds, args.trials, args.reference_trials, args.tolerance = 1, 3, 3, 1.0

    print(f"Sweep: causal_lm on {common.MODEL}, up to {args.trials} trials x {budget['max_steps']} steps "
          f"(eval every {budget['eval_every']}, batch {budget['batch_size']}, seq {budget['max_seq_length']}, "
          f"{dataset['max_eval_examples']} eval examples), {args.seeds} seeds, timeout {args.timeout:.0f} s",
          flush=True)
    ref = reference(args, budget, dataset, say=lambda text: print(text, flush=True))
    agreement = early_rank_agreement(ref.get("curves", []))
    if agreement:
        print("Reference trials, rank agreement of early eval_loss with the final one (Spearman): " + ", ".join(
            f"step {step} {rho:.2f}" for step, rho in agreement.items()), flush=True)
    target = ref["best"] * (1 + args.tolerance)
    survival = early_survival(ref.get("curves", []), target)
    if survival:
        n = next(iter(survival.values()))[0]
        print(f"Reference trials that reach the target: {n} of {len(ref['curves'])}; ranked in the top half / top "
              "quarter of all trials at " + ", ".join(f"step {step}: {half}/{quarter}"
                                                     for step, (_, half, quarter) in survival.items()), flush=True)
    print(f"Target: eval_loss <= {target:.4f} (reference {ref['best']:.4f} + {args.tolerance:.0%})", flush=True)
    runs = run_all(strategies, seeds=args.seeds, trials=args.trials, timeout=args.timeout, target=target,
                   budget=budget, dataset=dataset, say=lambda text: print(text, flush=True))
    text, ratios = table(runs, target)
    plot(runs, target, ref["best"], args.png)
    print()
    print(text)
    print()
    for line in verdicts(ratios):
        print(line)
    print(f"Anytime curves: {args.png}")
    print(f"Machine: {common.machine()}")
    print(f"Date: {dt.date.today().isoformat()}")
    summary = {"reference": ref, "target": target, "ratios": ratios,
               "time_to_target": {n: [common.time_to_target(r, target) for r in rs] for n, rs in runs.items()},
               "runs": runs}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
