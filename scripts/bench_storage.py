"""Storage overhead per trial: ftsweep's storage traffic replayed on SQLite, journal file and PostgreSQL.

    python scripts/bench_storage.py [--trials 50] [--evals 4] [--postgres-url URL] [--quick]

Each trial does to the study what an ftsweep trial does, without training: `study.optimize` asks a
trial, the objective stamps `worker`, samples 7 params (log-float learning rate, categorical
scheduler, float warmup and weight decay, int lora_r and lora_alpha, float dropout) with TPE, stores
`config`, then for each of K evaluations stores the growing `eval_history`, reports and asks
`should_prune` (a median pruner; its answer is ignored so every trial makes the same traffic),
finally stores `duration_s` and `metrics`, and the trial is told COMPLETE. The time per trial is
from one trial's end to the next; the in-memory row is the sampler and pruner alone, so
"storage" = row − in-memory. The heartbeat columns repeat the run on an RDBStorage with
heartbeat_interval=10, as distributed workers use it (stale-trial check and a first beat per trial).

PostgreSQL: --postgres-url URL, else $FTSWEEP_STORAGE when it is a postgresql URL, else a throwaway
server from scripts/cluster/start_postgres.sh on a free loopback port (its studies are deleted at
the end; a throwaway server is stopped and removed).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

REPO_ROOT = Path(__file__).resolve().parents[1]
START_POSTGRES = REPO_ROOT / "scripts" / "cluster" / "start_postgres.sh"
HEARTBEAT_INTERVAL = 10
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Row:
    """One storage's figures, in ms per trial (None: not measured)."""

    storage: str
    per_trial: list[float] = field(default_factory=list)
    heartbeat: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.per_trial) if self.per_trial else None

    @property
    def p95(self) -> float | None:
        return percentile(self.per_trial, 95)

    @property
    def heartbeat_mean(self) -> float | None:
        return statistics.fmean(self.heartbeat) if self.heartbeat else None

    @property
    def heartbeat_p95(self) -> float | None:
        return percentile(self.heartbeat, 95)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, math.ceil(q / 100 * len(ranked)) - 1)]


def replay_trial(trial: optuna.Trial, evals: int, rng: random.Random) -> float:
    """What search/backends/_optuna.py's `_run_trial` writes for one complete trial, minus the training."""
    started = time.monotonic()
    trial.set_user_attr("worker", WORKER)
    params = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-2, log=True),
        "lr_scheduler_type": trial.suggest_categorical("lr_scheduler_type", ["linear", "cosine", "constant"]),
        "warmup_ratio": trial.suggest_float("warmup_ratio", 0.0, 0.2),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
        "lora_r": trial.suggest_int("lora_r", 4, 64, log=True),
        "lora_alpha": trial.suggest_int("lora_alpha", 4, 128, log=True),
        "lora_dropout": trial.suggest_float("lora_dropout", 0.0, 0.1),
    }
    config = {**params, "target_modules": ["q_proj", "v_proj"], "max_steps": 60, "per_device_train_batch_size": 8}
    trial.set_user_attr("config", config)
    # A loss curve that depends on the params, so TPE and the median pruner have something to work on.
    floor = 0.6 + abs(math.log10(params["learning_rate"]) + 2) * 0.2 + rng.random() * 0.05
    history: list[dict[str, float]] = []
    loss = floor
    for k in range(1, evals + 1):
        loss = floor + 1.5 / k
        step = k * 60 // evals
        history.append({"step": step, "eval_loss": loss, "eval_perplexity": math.exp(loss), "eval_runtime": 0.05,
                        "eval_samples_per_second": 320.0, "epoch": step / 40})
        trial.set_user_attr("eval_history", history)
        trial.report(loss, step)
        trial.should_prune()  # asked as ftsweep asks it; ignored so every trial makes the same traffic
    trial.set_user_attr("duration_s", time.monotonic() - started)
    trial.set_user_attr("metrics", {**history[-1], "train_loss": loss + 0.1, "train_runtime": 1.8})
    return loss


def time_trials(storage, trials: int, evals: int, seed: int = 0) -> list[float]:
    """Run `trials` replayed trials with study.optimize on a new study; ms per trial, end to end."""
    name = f"bench-{uuid.uuid4().hex[:12]}"
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5))
    rng = random.Random(seed)
    ends: list[float] = []
    started = time.perf_counter()
    study.optimize(lambda t: replay_trial(t, evals, rng), n_trials=trials,
                   callbacks=[lambda study, trial: ends.append(time.perf_counter())])
    states = {t.state for t in study.get_trials(deepcopy=False)}
    assert states == {optuna.trial.TrialState.COMPLETE}, states
    if not isinstance(storage, optuna.storages.InMemoryStorage):
        optuna.delete_study(study_name=name, storage=storage)
    edges = [started, *ends]
    return [(b - a) * 1000 for a, b in itertools.pairwise(edges)]


@contextmanager
def throwaway_postgres():
    """A PostgreSQL from scripts/cluster/start_postgres.sh in a temp dir on a free port; yields its URL."""
    root = Path(tempfile.mkdtemp(prefix="ftsweep-bench-pg-"))
    if os.geteuid() == 0:
        root.chmod(0o711)  # the server runs as the postgres user, which must reach root/data
    datadir = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = secrets.token_hex(16)
    env = {**os.environ, "FTSWEEP_DB_PASSWORD": password}  # the environment, never the command line
    try:
        done = subprocess.run(["bash", str(START_POSTGRES), "start", str(datadir), "--port", str(port)],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1])
        yield f"postgresql+psycopg2://ftsweep:{password}@127.0.0.1:{port}/optuna"
    finally:
        if (datadir / "postmaster.pid").exists():
            subprocess.run(["bash", str(START_POSTGRES), "stop", str(datadir)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def postgres_version(url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SHOW server_version")).scalar()
    finally:
        engine.dispose()


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    ram = ""
    if Path("/proc/meminfo").exists():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f", {kib / 2**20:.0f} GiB RAM"
    import sqlalchemy

    versions = f"Python {platform.python_version()}, optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}"
    try:
        import psycopg2

        versions += f", psycopg2 {psycopg2.__version__.split()[0]}"
    except ImportError:
        pass
    return [f"Machine: {platform.system()} {platform.release()}, {os.cpu_count()} CPU cores ({cpu}){ram}", versions]


def filesystem(path: str) -> str:
    """The type of the filesystem holding `path`, from /proc/mounts (e.g. ext4, overlay, tmpfs)."""
    best, kind = "", "filesystem unknown"
    if Path("/proc/mounts").exists():
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fstype
    return kind


def measure(label: str, make_storage, args, *, make_heartbeat_storage=None) -> Row:
    row = Row(label)
    try:
        row.per_trial = time_trials(make_storage(), args.trials, args.evals)
        if make_heartbeat_storage is not None:
            row.heartbeat = time_trials(make_heartbeat_storage(), args.trials, args.evals)
    except Exception as exc:  # one storage failing must not hide the others' figures
        row.note = f"failed: {type(exc).__name__}: {exc}"
    return row


def run(args) -> tuple[list[Row], list[str]]:
    wanted = set(args.storages.split(","))
    notes: list[str] = []
    rows = [measure("in-memory (sampler + pruner only)", optuna.storages.InMemoryStorage, args)]
    with tempfile.TemporaryDirectory(prefix="ftsweep-bench-", dir=args.dir) as tmp:
        if "sqlite" in wanted:
            files = iter(range(2))
            rows.append(measure("sqlite (file)", lambda: f"sqlite:///{tmp}/bench-{next(files)}.db", args,
                                make_heartbeat_storage=lambda: RDBStorage(f"sqlite:///{tmp}/bench-hb.db",
                                                                          heartbeat_interval=HEARTBEAT_INTERVAL)))
        if "journal" in wanted:
            rows.append(measure("journal (file)", lambda: JournalStorage(JournalFileBackend(f"{tmp}/bench.log")), args))
        notes.append(f"SQLite and journal files in {Path(tmp).parent} ({filesystem(tmp)})")
    if "postgres" in wanted:
        url = args.postgres_url
        if not url and os.environ.get("FTSWEEP_STORAGE", "").startswith("postgresql"):
            url = os.environ["FTSWEEP_STORAGE"]
        where = "given URL" if url else "throwaway server from scripts/cluster/start_postgres.sh"
        try:
            with nullcontext(url) if url else throwaway_postgres() as url:
                notes.append(f"PostgreSQL {postgres_version(url)} at {redacted(url)} ({where})")
                host = redacted(url).split("@")[-1].split("/")[0]
                with_heartbeat = lambda: RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL)  # noqa: E731
                rows.append(measure(f"postgresql ({host})", lambda: url, args, make_heartbeat_storage=with_heartbeat))
        except Exception as exc:  # no server: say why in the table, keep the other rows
            rows.append(Row("postgresql", note=f"not measured: {type(exc).__name__}: {exc}"))
    return rows, notes


def table(rows: list[Row]) -> list[str]:
    baseline = rows[0].mean

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    lines = [("| storage | mean ms/trial | p95 ms/trial | storage ms/trial (− in-memory) | "
              f"heartbeat {HEARTBEAT_INTERVAL} s: mean | heartbeat: p95 |"),
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row.note:
            lines.append(f"| {row.storage} | {row.note} | | | | |")
            continue
        storage = "—" if row is rows[0] or baseline is None else f"{row.mean - baseline:+.1f}"
        lines.append(f"| {row.storage} | {ms(row.mean)} | {ms(row.p95)} | {storage} | {ms(row.heartbeat_mean)} | "
                     f"{ms(row.heartbeat_p95)} |")
    return lines


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50, help="trials per storage (default 50)")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per trial (default 4)")
    parser.add_argument("--storages", default="sqlite,journal,postgres",
                        help="comma-separated subset of sqlite,journal,postgres")
    parser.add_argument("--postgres-url", help="an existing PostgreSQL database (default: $FTSWEEP_STORAGE or a "
                                               "throwaway server)")
    parser.add_argument("--dir", help="where the SQLite and journal files go (default: the temp dir)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 trials of 2 evaluations")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.evals = 5, 2
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    rows, notes = run(args)
    print(f"Storage overhead per trial: {args.trials} trials × {args.evals} evaluations per storage, "
          "TPE sampler, median pruner, study.optimize as ftsweep runs it")
    print("\n".join(table(rows)))
    for line in [*machine(), *notes]:
        print(line)
    sys.stdout.flush()
    return rows


if __name__ == "__main__":
    main()
