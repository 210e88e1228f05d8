"""Per-trial overhead of W&B logging: the same sweep with tracking off and offline, alternating.

    python scripts/bench_tracking.py [--trials 8] [--repeats 3]

Each run is a fresh study in a temporary directory; the figure is the mean per-trial wall time
(trial start to end, from the study store) with W&B offline minus with W&B off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import optuna  # noqa: E402

from search.backends import get_backend  # noqa: E402
from search.sweep import load_sweep  # noqa: E402
from search.store.storage import open_storage


def run_once(mode: str, trials: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ftsweep-bench-") as tmp:
        sweep = load_sweep("demo", [f"n_trials={trials}", f"output_dir={tmp}", f"tracking.wandb={mode}",
                                    "pruner=none"])
        started = time.perf_counter()
        get_backend("optuna")(sweep).run()
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
        per_trial = statistics.mean(t.duration.total_seconds() for t in study.get_trials())
        return wall, per_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict[str, list[tuple[float, float]]] = {"off": [], "offline": []}
    for _ in range(args.repeats):
        for mode in ("off", "offline"):  # alternating, so drift hits both sides alike
            results[mode].append(run_once(mode, args.trials))
    for mode, runs in results.items():
        walls, trials = zip(*runs)
        print(f"{mode:>8}: sweep wall {statistics.median(walls):6.2f}s (median of {len(walls)}), "
              f"per-trial {statistics.median(trials):.3f}s")
    off = statistics.median(t for _, t in results["off"])
    offline = statistics.median(t for _, t in results["offline"])
    print(f"W&B offline overhead per trial: {offline - off:+.3f}s ({(offline - off) / off:+.1%} of a trial)")


if __name__ == "__main__":
    main()
