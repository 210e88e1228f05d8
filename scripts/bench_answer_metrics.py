"""Answer metrics on the bundled routing sweep: what exact_match and choice_accuracy cost per evaluated row, how
often they agree, and whether eval_loss ranks trials as choice_accuracy does.

    python scripts/bench_answer_metrics.py [--trials 12] [--rows 100] [--repeats 3]
    python scripts/bench_answer_metrics.py --quick      # 3 trials of 8 steps on 16 rows (what the test runs)

Trials are the routing sweep's (`search/sweeps/routing.yaml`: the bundled tiny LM, chat rows answered "I have
passed your message to our TEAM team.", four teams), with a learning rate and LoRA rank drawn with seed 0 from
its space, each trained for the sweep's budget. After each trial's training, on the same validation rows:
exact_match (greedy decoding to the end of the turn) and choice_accuracy (one batched forward pass over every
row's four choices) are each timed `--repeats` times, alternating, and the median ms per row kept; agreement is
the share of rows both call right or both call wrong. Then, over the trials: Spearman's rank correlation of
eval_loss (lower better) with choice_accuracy, and the accuracy of the loss-best and of the accuracy-best trial,
against always answering the most common team.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    from scipy.stats import spearmanr

    from objectives import TrialOptions
    from search.sweep import load_sweep

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=100, help="validation rows scored (objective.args.eval_samples)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 trials of 8 steps on 16 rows: a smoke run")
    args = parser.parse_args(argv)
    overrides = [f"objective.args.eval_samples={16 if args.quick else args.rows}", "tracking.wandb=off"]
    if args.quick:
        overrides += ["budget.max_steps=8", "budget.eval_every=8", "dataset.max_train_examples=128"]
    sweep = load_sweep("routing", overrides)
    sweep.plan_metrics()  # as the launch does: the choices inferred from the answers
    objective = sweep.make_objective()
    objective.setup()
    task, tokenizer = objective.task, objective.tokenizer
    rows = objective.tokenized_data.state.answer_rows
    rng = random.Random(0)
    trials = []
    for number in range(3 if args.quick else args.trials):
        params = {"learning_rate": 10 ** rng.uniform(-3, -1), "lora_r": rng.choice([4, 8, 16])}
        params["lora_alpha"] = 2 * params["lora_r"]
        measured: dict = {}

        def measure(model, trainer, measured=measured):
            times = {"exact_match": [], "choice_accuracy": []}
            scores = {}
            for repeat in range(args.repeats):
                for metric in (("exact_match", "choice_accuracy") if repeat % 2 else ("choice_accuracy", "exact_match")):
                    started = time.perf_counter()
                    scores[metric] = task.answer_scores(model, tokenizer, rows, {metric})
                    times[metric].append((time.perf_counter() - started) * 1000 / len(rows))
            exact, choice = scores["exact_match"].per_example["exact_match"], scores["choice_accuracy"].per_example["choice_accuracy"]
            measured.update(
                ms_per_row={m: statistics.median(v) for m, v in times.items()},
                exact_match=scores["exact_match"].metrics["exact_match"],
                choice_accuracy=scores["choice_accuracy"].metrics["choice_accuracy"],
                agreement=sum(a == b for a, b in zip(exact, choice)) / len(rows))
            return {}

        result = objective.run_trial(params, options=TrialOptions(after_training=measure))
        trials.append({"number": number, "params": params, "eval_loss": result["eval_loss"], **measured})
    answers = Counter(row.answer for row in rows)
    majority = answers.most_common(1)[0][1] / len(rows)
    loss_best = min(trials, key=lambda t: t["eval_loss"])
    accuracy_best = max(trials, key=lambda t: t["choice_accuracy"])
    rho = spearmanr([-t["eval_loss"] for t in trials], [t["choice_accuracy"] for t in trials]).statistic
    summary = {
        "trials": trials,
        "ms_per_row": {m: statistics.median(t["ms_per_row"][m] for t in trials) for m in ("exact_match", "choice_accuracy")},
        "agreement": statistics.mean(t["agreement"] for t in trials),
        "spearman_loss_accuracy": float(rho),
        "loss_best": loss_best, "accuracy_best": accuracy_best, "majority": majority,
    }
    print(f"Machine: {common.machine()}")
    print(f"Date: {dt.date.today().isoformat()}")
    print(f"routing sweep, {len(trials)} trials x {objective.budget.max_steps} steps, {len(rows)} validation rows, "
          f"{len(task.resolve_choices(objective.worker.splits.train, objective.worker.splits.validation))} choices")
    print(f"{'trial':>5} {'lr':>8} {'r':>3} {'eval_loss':>9} {'choice_acc':>10} {'exact':>6} {'agree':>6} "
          f"{'ms/row exact':>12} {'ms/row choice':>13}")
    for t in trials:
        print(f"{t['number']:>5} {t['params']['learning_rate']:>8.4f} {t['params']['lora_r']:>3} {t['eval_loss']:>9.3f} "
              f"{t['choice_accuracy']:>10.2f} {t['exact_match']:>6.2f} {t['agreement']:>6.2f} "
              f"{t['ms_per_row']['exact_match']:>12.2f} {t['ms_per_row']['choice_accuracy']:>13.2f}")
    ms = summary["ms_per_row"]
    print(f"median ms per row: exact_match {ms['exact_match']:.2f}, choice_accuracy {ms['choice_accuracy']:.2f} "
          f"({ms['exact_match'] / ms['choice_accuracy']:.1f}x)")
    print(f"agreement of the two per row: {summary['agreement']:.2f}")
    print(f"Spearman(-eval_loss, choice_accuracy) over trials: {rho:+.2f}")
    print(f"loss-best trial {loss_best['number']}: eval_loss {loss_best['eval_loss']:.3f}, choice_accuracy "
          f"{loss_best['choice_accuracy']:.2f}; accuracy-best trial {accuracy_best['number']}: eval_loss "
          f"{accuracy_best['eval_loss']:.3f}, choice_accuracy {accuracy_best['choice_accuracy']:.2f}; "
          f"most common team alone: {majority:.2f}")
    return summary


if __name__ == "__main__":
    main()
