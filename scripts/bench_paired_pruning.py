"""The paired pruner against the median rule on answer accuracy: what each prunes, and how often it prunes the
trial that would have won.

    python scripts/bench_paired_pruning.py [--trials 16] [--orders 200] [--rows 100]
    python scripts/bench_paired_pruning.py --quick      # 4 trials of 8 steps, 20 orders (what the test runs)

Recording. The bundled `routing` sweep's trials (tiny-support-lm, chat rows answered "... our TEAM team.",
choice_accuracy on --rows validation rows, the same rows in every trial), learning rate and LoRA rank drawn
with seed 0 from its space, are each trained to the end (60 steps, an evaluation every 10), unpruned; every
evaluation's value and per-example scores are kept.

Replay. Pruning decisions depend only on what trials report, so each pruner is replayed on the recorded
trials in --orders random orders (seeded): a fresh Optuna study with that pruner is told each trial's
evaluations in turn (`trial.report` + `should_prune`, the paired pruner reading the recorded scores files),
and a pruned trial stops there. Per pruner, over the orders (mean):
    pruned          share of trials pruned
    steps trained   share of all training steps still run (the rest is what pruning saves)
    winner pruned   share of orders in which the trial with the best final accuracy was pruned
    regret          best final accuracy of all trials minus the best among the trials left to finish
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

METRIC = "choice_accuracy"


def record(n_trials: int, rows: int, quick: bool, scores_root: Path) -> list[dict]:
    """Every trial trained to its end: {"params", "curve": {step: value}}, scores in scores_root/trial-K."""
    from objectives import TrialOptions
    from search.sweep import load_sweep

    overrides = [f"objective.args.eval_samples={rows}", "budget.eval_every=10", "tracking.wandb=off"]
    if quick:
        overrides += ["budget.max_steps=8", "budget.eval_every=4", "dataset.max_train_examples=128"]
    sweep = load_sweep("routing", overrides)
    sweep.plan_metrics()
    objective = sweep.make_objective()
    objective.setup()
    rng = random.Random(0)
    trials = []
    for number in range(n_trials):
        params = {"learning_rate": 10 ** rng.uniform(-3, -1), "lora_r": rng.choice([4, 8, 16])}
        params["lora_alpha"] = 2 * params["lora_r"]
        curve: dict[int, float] = {}
        objective.run_trial(params, lambda step, m, curve=curve: curve.__setitem__(step, m[METRIC]) or False,
                            TrialOptions(scores_dir=scores_root / f"trial-{number}"))
        trials.append({"params": params, "curve": curve})
    return trials


def replay(trials: list[dict], make_pruner, scores_root: Path, order: list[int]) -> dict:
    """One order of the recorded trials through a fresh study with the pruner `make_pruner(scores_dir)` builds."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="ftsweep-replay-") as tmp:
        study = optuna.create_study(direction="maximize", pruner=make_pruner(Path(tmp)))
        pruned, steps, finals = set(), 0, {}
        for source in order:
            trial = study.ask()
            shutil.copytree(scores_root / f"trial-{source}", Path(tmp) / f"trial-{trial.number}")
            curve = trials[source]["curve"]
            stopped = False
            for step in sorted(curve):
                trial.report(curve[step], step)
                steps += step - max([s for s in curve if s < step], default=0)
                # As in a trial (objectives/engine/callback.py): one that trained its whole budget completes.
                if step < max(curve) and trial.should_prune():
                    stopped = True
                    break
            if stopped:
                pruned.add(source)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                finals[source] = curve[max(curve)]
                study.tell(trial, finals[source])
    return {"pruned": pruned, "steps": steps, "finals": finals}


def main(argv: list[str] | None = None) -> dict:
    import optuna

    from search.components.paired_pruner import PairedPruner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="4 trials of 8 steps, 20 orders: a smoke run")
    args = parser.parse_args(argv)
    n_trials, orders = (4, 20) if args.quick else (args.trials, args.orders)
    pruners = {
        "median (n_startup_trials=2)": lambda _: optuna.pruners.MedianPruner(n_startup_trials=2),
        "median (n_startup_trials=4)": lambda _: optuna.pruners.MedianPruner(n_startup_trials=4),
        "paired (p < 0.1)": lambda d: PairedPruner(p_threshold=0.1, n_startup_trials=2, scores_dir=d, metric=METRIC),
        "paired (p < 0.05)": lambda d: PairedPruner(p_threshold=0.05, n_startup_trials=2, scores_dir=d, metric=METRIC),
        "paired (p < 0.01)": lambda d: PairedPruner(p_threshold=0.01, n_startup_trials=2, scores_dir=d, metric=METRIC),
        "paired vs median (p < 0.1)": lambda d: PairedPruner(p_threshold=0.1, n_startup_trials=2, against="median",
                                                             scores_dir=d, metric=METRIC),
        "paired vs median (p < 0.05)": lambda d: PairedPruner(p_threshold=0.05, n_startup_trials=2, against="median",
                                                              scores_dir=d, metric=METRIC),
        "none": lambda _: optuna.pruners.NopPruner(),
    }
    with tempfile.TemporaryDirectory(prefix="ftsweep-paired-") as tmp:
        root = Path(tmp)
        trials = record(n_trials, args.rows, args.quick, root)
        total_steps = sum(max(t["curve"]) for t in trials)
        best = max(t["curve"][max(t["curve"])] for t in trials)
        winners = {i for i, t in enumerate(trials) if t["curve"][max(t["curve"])] == best}
        rng = random.Random(0)
        permutations = [rng.sample(range(n_trials), n_trials) for _ in range(orders)]
        summary = {}
        for name, make in pruners.items():
            runs = [replay(trials, make, root, order) for order in permutations]
            summary[name] = {
                "pruned": statistics.mean(len(r["pruned"]) / n_trials for r in runs),
                "steps": statistics.mean(r["steps"] / total_steps for r in runs),
                "winner_pruned": statistics.mean(bool(winners <= r["pruned"]) for r in runs),
                "regret": statistics.mean(best - max(r["finals"].values(), default=0.0) for r in runs),
            }
    print(f"Machine: {common.machine()}")
    print(f"Date: {dt.date.today().isoformat()}")
    finals = sorted((t["curve"][max(t["curve"])] for t in trials), reverse=True)
    print(f"routing sweep, {n_trials} trials recorded unpruned ({max(trials[0]['curve'])} steps, evaluations at "
          f"{sorted(trials[0]['curve'])}), {METRIC} on {args.rows} validation rows at most; "
          f"final accuracies {', '.join(f'{v:.2f}' for v in finals)}; {orders} orders replayed")
    print(f"{'pruner':<30} {'pruned':>7} {'steps trained':>14} {'winner pruned':>14} {'regret':>7}")
    for name, row in summary.items():
        print(f"{name:<30} {row['pruned']:>7.2f} {row['steps']:>14.2f} {row['winner_pruned']:>14.2f} {row['regret']:>7.3f}")
    return {"trials": trials, "summary": summary}


if __name__ == "__main__":
    main()
