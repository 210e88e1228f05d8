"""One worker process using every core vs one single-threaded worker per core, same sweep, same work.

Equal work: the bundled demo sweep without pruning (so both sides train every step of every trial),
`--trials` trials. Side "one": `ftsweep launch demo` (one process, torch's default threads = all
cores). Side "per-core": `ftsweep launch demo --workers N` on a journal file (N = cores, one thread
each, as `--workers` sets OMP_NUM_THREADS). Sides alternate, `--reps` repetitions, each in a fresh
temporary directory. Reported per run: wall time of the command, and the trial phase (first trial
start to last trial end, i.e. without process start-up and model loading).

    python scripts/bench_parallel.py                 # 12 trials x 40 steps, 3 repetitions (~3 min on 2 cores)
    python scripts/bench_parallel.py --trials 2 --steps 4 --reps 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FTSWEEP = [sys.executable, "-m", "search.cli"]
REPO = Path(__file__).resolve().parents[1]


def run_side(side: str, workdir: Path, *, trials: int, steps: int, workers: int) -> dict[str, float]:
    import optuna

    from search.store.storage import open_storage

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    journal = f"journal:///{workdir / 'store' / 'demo.journal'}"
    command = FTSWEEP + ["launch", "demo", "--set", "pruner=none", "--set", f"n_trials={trials}",
                         "--set", f"budget.max_steps={steps}", "--set", f"budget.eval_every={max(1, steps // 4)}",
                         "--set", "tracking.wandb=off", "--set", f"output_dir={workdir / 'runs'}",
                         "--storage", journal]
    if side == "per-core":
        command += ["--workers", str(workers)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    trials_done = optuna.load_study(study_name="demo", storage=open_storage(journal)).get_trials()
    phase = (max(t.datetime_complete for t in trials_done) - min(t.datetime_start for t in trials_done)).total_seconds()
    return {"wall_s": wall, "phase_s": phase, "complete": sum(t.state.name == "COMPLETE" for t in trials_done)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="default: one per core")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"one": [], "per-core": []}
    with tempfile.TemporaryDirectory(prefix="ftsweep-bench-parallel-") as tmp:
        for rep in range(args.reps):
            order = ("one", "per-core") if rep % 2 == 0 else ("per-core", "one")
            for side in order:
                result = run_side(side, Path(tmp) / side, trials=args.trials, steps=args.steps, workers=args.workers)
                results[side].append(result)
                print(f"rep {rep + 1} {side:>8}: wall {result['wall_s']:6.1f} s, trial phase {result['phase_s']:6.1f} s, "
                      f"{result['complete']:.0f} complete", flush=True)
    print(f"\n{args.trials} trials x {args.steps} steps, no pruning, {os.cpu_count()} cores; medians of {args.reps}:")
    print("| side | wall s | trial phase s |\n|---|---:|---:|")
    medians = {}
    for side, rows in results.items():
        medians[side] = {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "phase_s")}
        label = "1 process, all cores" if side == "one" else f"{args.workers} workers, 1 thread each"
        print(f"| {label} | {medians[side]['wall_s']:.1f} | {medians[side]['phase_s']:.1f} |")
    print(f"per-core / one: wall {medians['per-core']['wall_s'] / medians['one']['wall_s']:.2f}, "
          f"trial phase {medians['per-core']['phase_s'] / medians['one']['phase_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
