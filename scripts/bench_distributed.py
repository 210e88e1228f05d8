"""The distributed path's own cost per step: one trial in this process against the same trial as a process group.

    python scripts/bench_distributed.py [--repeats 3] [--world-sizes 1,2]
    python scripts/bench_distributed.py --quick     # 1 repeat of a few steps (what the test runs)

The sweep of scripts/bench_pruning.py (its model, data and 40-step budget: batch 16, evaluation every 10), one
fixed LoRA config, the objective made once. Each repeat runs, in rotated order:

    alone      `Objective.run_trial` in this process (set up once, before timing)
    G=N        `run_distributed_trial(group=RankGroup(world_size=N))`: N rank processes (gloo on CPUs, NCCL on GPUs), each
               setting up its own objective, the same global batch (16 / N rows per rank per step)

    per step        seconds from the first evaluation's report to the last's, over the steps between them
                    (training and the evaluations in that span: the same work on every side)
    to first eval   seconds from the call to the first evaluation's report (for G=N: starting the ranks,
                    their set-up and process group, the first steps)

Medians over the repeats. On a CPU, G=1 is the distributed path's overhead alone (a process group of one,
a rank process, the relay of every evaluation and log); G=2 splits each step over processes that share the
same cores, so it measures communication, not a speed-up. On a machine with GPUs, pass --world-sizes 1,2,4,8.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

PARAMS = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "learning_rate": 3e-3, "lr_scheduler_type": "linear",
          "warmup_ratio": 0.1, "weight_decay": 0.01, "target_modules": "attention_qv"}


def _timed(run) -> tuple[float, float]:
    """(seconds per step between the first and last evaluation, seconds to the first evaluation) of `run(report)`."""
    marks: list[tuple[int, float]] = []
    started = time.perf_counter()
    run(lambda step, metrics: marks.append((step, time.perf_counter())) or False)
    (first_step, first_t), (last_step, last_t) = marks[0], marks[-1]
    return (last_t - first_t) / max(last_step - first_step, 1), first_t - started


def main(argv: list[str] | None = None) -> dict:
    from objectives.engine.distributed import RankGroup, run_distributed_trial

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world-sizes", default="1,2", help="process-group sizes to compare (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4-step trials: a smoke run")
    args = parser.parse_args(argv)
    budget, dataset = (common.QUICK_BUDGET, common.QUICK_DATASET) if args.quick else (common.BUDGET, common.DATASET)
    repeats = 1 if args.quick else args.repeats
    sizes = [int(n) for n in args.world_sizes.split(",")]
    config = {"dataset": dataset, "budget": budget}
    objective = common._objective(config)  # set up: the side "alone" times trials only
    objective.run_trial(PARAMS)  # warm-up

    def distributed(n):
        return lambda report: run_distributed_trial(common._objective_unset(config), PARAMS, report,
                                                    group=RankGroup(world_size=n))

    sides = {"alone": lambda report: objective.run_trial(PARAMS, report),
             **{f"G={n}": distributed(n) for n in sizes}}
    distributed(sizes[0])(lambda step, metrics: False)  # warm-up: the ranks' forkserver starts once per process
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for repeat in range(repeats):
        for name in common.rotated(list(sides), repeat):
            figures[name].append(_timed(sides[name]))
            print(f"  repeat {repeat} {name:>5}: {figures[name][-1][0] * 1000:.1f} ms per step, "
                  f"{figures[name][-1][1]:.2f} s to the first evaluation", flush=True)
    rows = {name: {"step_ms": 1000 * statistics.median(s for s, _ in values),
                   "first_eval_s": statistics.median(f for _, f in values)} for name, values in figures.items()}
    print("\n| side | ms per step (median) | s to first evaluation (median) |\n|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['step_ms']:.1f} | {row['first_eval_s']:.2f} |")
    print(f"\nMachine: {common.machine()}\nDate: {dt.date.today().isoformat()}")
    base, one = rows["alone"]["step_ms"], rows[f"G={sizes[0]}"]["step_ms"]
    print(f"distributed path, {sizes[0]} process(es) / alone: {one:.1f} ms against {base:.1f} ms per step "
          f"({100 * (one / base - 1):+.1f} %)")
    return rows


if __name__ == "__main__":
    main()
