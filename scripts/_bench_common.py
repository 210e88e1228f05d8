"""What scripts/bench_vs_hf.py and scripts/bench_pruning.py share: one sweep, run three ways.

The three sides run the *same* search: the same data, tokenized once by ftsweep's own objective
(`causal_lm.setup()` on `bundled:tiny-support-lm` + `bundled:support-qa`), the same collator, the
same `TrainingArguments` (`Objective.training_arguments`: steps, evaluation schedule, batch sizes,
seed), the same space and the same seeded TPE sampler, so for one seed all sides draw the same
configs in the same order.

    ftsweep   the real `ftsweep launch` path: a sweep file in a temporary directory, `load_sweep`,
              `get_backend(backend)(sweep, listener=SweepProgress).run()` (backend optuna, or ray for
              bench_pruning --with-ray) with the progress display drawn into an in-memory forced
              terminal (its refresh thread runs as in a shell), the default SQLite study file,
              tracking off. Sampler TPE; pruner as the scenario says (ftsweep's default is `median`,
              Optuna's `MedianPruner()`).
    hf        `Trainer(model_init=...).hyperparameter_search(backend="optuna")`, the usual PEFT
              recipe: `model_init(trial)` loads the base model from disk and wraps it with
              `get_peft_model` and the trial's `LoraConfig` (LoRA params suggested there);
              `hp_space(trial)` gives the `TrainingArguments` fields. `pruner=` as the scenario says;
              pruner "default" passes no pruner argument at all, so Optuna adds `MedianPruner()`.
    bare      the floor: the base model loaded once, an in-memory Optuna study with the same sampler
              and space, and per trial `get_peft_model` + a plain torch loop (fused AdamW as Trainer
              uses on this stack, the same schedule, clipping at 1.0, evaluation every eval_every
              steps), `unload()` after.

Each side runs in a fresh interpreter (`run_side`): `python scripts/_bench_common.py CONFIG RESULT`,
so imports, start-up and peak memory are its own. What a child measures, all in seconds from the
moment the parent spawned it:

    sweep_end     the sweep returned (imports, data, every trial); the process then only exits
    trials        per trial (from the Optuna study record): start, end, state, value (final eval_loss,
                  or the last reported one when pruned), steps trained
    train_s       time inside training steps: fetching and collating the step's batch
                  (`Trainer.get_batch_samples`, which runs before `on_step_begin`) plus Trainer's
                  `on_step_begin` -> `on_step_end` (forward, backward, clipping, optimizer and
                  scheduler step); the bare loop times the same work
    eval_s        time inside evaluation loops (`Trainer.evaluation_loop`, i.e. the forward passes over
                  the eval set; reporting to the pruner is not in it)
    peak_rss_mb   `getrusage(RUSAGE_SELF).ru_maxrss` of the child at the end

The timers are installed the same way in ftsweep and hf children: a callback appended to
`transformers.trainer.DEFAULT_CALLBACKS` (so every Trainer the process builds carries it) and
wrappers around `Trainer.get_batch_samples` and `Trainer.evaluation_loop`. Nothing in ftsweep's own
code is changed.

`stop_below`: the sweep stops after the first *completed* trial whose value is at or below it
(time-to-target runs); `study.stop()` from a trial-end callback (ftsweep's listener, the bare
loop's callback) or from inside the trial (hf, whose `hyperparameter_search` takes no callbacks).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python scripts/...` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

MODEL = "bundled:tiny-support-lm"
DATASET = {"source": "bundled:support-qa", "validation_fraction": 0.1, "max_eval_examples": 64}
# The demo's per-trial settings (search/sweeps/demo.yaml) with 40 steps: a ~0.8 s ftsweep trial on 2 cores.
BUDGET = {"max_steps": 40, "eval_every": 10, "batch_size": 16, "max_seq_length": 64}
QUICK_BUDGET = {"max_steps": 4, "eval_every": 2, "batch_size": 4, "max_seq_length": 64}
QUICK_DATASET = {**DATASET, "max_train_examples": 128, "max_eval_examples": 16}
# The seed of the data split, adapter init and training, the same in every run: only the search
# (the sampler's seed, `seed` in a run's config) varies, so eval losses compare across runs.
DATA_SEED = 0

# The searched space: learning rate, scheduler, warmup, weight decay, LoRA r / alpha / dropout.
# LoRA params first: the HF recipe suggests them in model_init, which Trainer calls before hp_space,
# and Optuna's seeded samplers draw in suggestion order -- same order, same configs on every side.
SPACE: dict[str, Any] = {
    "params": {
        "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
        "lora_alpha_ratio": {"type": "categorical", "choices": [1, 2, 4]},
        "lora_alpha": {"type": "derived", "from": "lora_r", "times": "lora_alpha_ratio", "as": "int"},
        "lora_dropout": {"type": "float", "low": 0.0, "high": 0.1},
        "learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
        "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "target_modules": {"type": "fixed", "value": "attention_qv"},
    }
}


def suggest_lora(trial) -> dict[str, Any]:
    """The LoRA half of SPACE, as the HF recipe suggests it inside `model_init(trial)`."""
    r = trial.suggest_categorical("lora_r", [4, 8, 16])
    ratio = trial.suggest_categorical("lora_alpha_ratio", [1, 2, 4])
    dropout = trial.suggest_float("lora_dropout", 0.0, 0.1)
    return {"r": r, "lora_alpha": int(r * ratio), "lora_dropout": dropout}


def hp_space(trial) -> dict[str, Any]:
    """The TrainingArguments half of SPACE, as `hyperparameter_search(hp_space=...)` takes it.

    transformers >= 5 reads a float below 1 in `warmup_steps` as a ratio (ftsweep maps `warmup_ratio`
    there too). `_hp_search_setup` casts each value to the type of the current field, so the base
    TrainingArguments must hold a float `warmup_steps` (0.0): with the default int 0, every ratio
    would be floored to 0 steps of warmup without a word.
    """
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1.0e-4, 3.0e-2, log=True),
        "lr_scheduler_type": trial.suggest_categorical("lr_scheduler_type", ["linear", "cosine"]),
        "warmup_steps": trial.suggest_float("warmup_ratio", 0.0, 0.2),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
    }


def sample_bare(trial) -> dict[str, Any]:
    """SPACE for the bare loop, in the same suggestion order as the other two sides."""
    return {**suggest_lora(trial), **hp_space(trial)}


def make_pruner(spec: dict[str, Any] | None, budget: dict[str, int]):
    """An Optuna pruner for {"name", "args"} with ftsweep's meaning of the names (search/components/pruners.py):
    hyperband and successive halving count resources in optimizer steps from `eval_every`."""
    import optuna

    name = (spec or {}).get("name", "none")
    args = dict((spec or {}).get("args", {}))
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**args)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": budget["eval_every"], **args})
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            **{"min_resource": budget["eval_every"], "max_resource": budget["max_steps"], **args})
    raise ValueError(f"unknown pruner {name!r}")


# --------------------------------------------------------------------------- parent side


def run_side(config: dict[str, Any]) -> dict[str, Any]:
    """Run one side of one repetition in a fresh interpreter; returns the child's figures.

    `config`: side ("ftsweep" | "hf" | "bare"), n_trials, seed (the sampler's), budget, dataset,
    pruner; optionally stop_below, timeout (seconds after which no trial starts), and for ftsweep
    backend ("ray"), storage (a URL; "{workdir}" is the run's temporary directory), objective
    (a class path) and pack (slots of packed trials).
    """
    with tempfile.TemporaryDirectory(prefix="ftsweep-bench-") as tmp:
        config_path, result_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        # CLOCK_MONOTONIC is system-wide on Linux: the child measures against the same clock.
        config = {**config, "workdir": tmp, "spawned": time.monotonic()}
        config_path.write_text(json.dumps(config))
        proc = subprocess.run([sys.executable, __file__, str(config_path), str(result_path)],
                              capture_output=True, text=True, cwd=tmp, check=False)
        exited = time.monotonic() - config["spawned"]
        if proc.returncode != 0 or not result_path.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise RuntimeError(f"{config['side']} run failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(result_path.read_text())
    result["process_s"] = exited
    return result


# What every ftsweep run imports before its first trial: run_forked imports it once, in the parent.
WARM_IMPORTS = ("torch", "transformers", "transformers.trainer", "peft", "datasets", "optuna", "rich",
                "objectives", "search.sweep", "search.backends", "search.backends._optuna", "search.observers.progress")


def import_seconds(repeats: int = 3) -> float:
    """Median seconds a fresh interpreter takes to import WARM_IMPORTS (what run_forked's figures leave out)."""
    code = ("import time; t = time.monotonic(); import importlib; "
            f"[importlib.import_module(m) for m in {WARM_IMPORTS!r}]; print(time.monotonic() - t)")
    times = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
        times.append(float(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def run_forked(config: dict[str, Any]) -> dict[str, Any]:
    """`run_side`, in a child forked from a server process that has imported WARM_IMPORTS once
    (multiprocessing's forkserver, started fresh: whatever this process has run, its children start from a
    clean, freshly imported state). Each run is spared the imports (about 6.6 s on 2 cores); add
    `import_seconds()` to its times from spawn."""
    import multiprocessing

    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["_bench_common", *WARM_IMPORTS])
        warm_up = _FORKSERVER.Process(target=_no_run)  # the server's own start-up and imports, before any timing
        warm_up.start()
        warm_up.join()
    with tempfile.TemporaryDirectory(prefix="ftsweep-bench-") as tmp:
        config_path, result_path, log = Path(tmp) / "config.json", Path(tmp) / "result.json", Path(tmp) / "log"
        config = {**config, "workdir": tmp, "spawned": time.monotonic()}
        config_path.write_text(json.dumps(config))
        child = _FORKSERVER.Process(target=_forked_child, args=(str(config_path), str(result_path), str(log)))
        child.start()
        child.join()
        exited = time.monotonic() - config["spawned"]
        if child.exitcode != 0 or not result_path.exists():
            tail = "\n".join(log.read_text().strip().splitlines()[-25:]) if log.exists() else ""
            raise RuntimeError(f"{config['side']} run failed (exit {child.exitcode}):\n{tail}")
        result = json.loads(result_path.read_text())
    result["process_s"] = exited
    return result


_FORKSERVER = None  # run_forked's multiprocessing context, its server started on first use


def _no_run() -> None:
    """A child that does nothing: it makes the forkserver start (and import) before the first timed run."""


def _forked_child(config_path: str, result_path: str, log: str) -> None:
    """A run_forked child: its output to `log`, in its work folder, as a spawned run_side child."""
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        os.chdir(Path(config_path).parent)
        try:
            child_main(config_path, result_path)
        finally:
            sys.stdout.flush(), sys.stderr.flush()


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Figures of one run: sweep wall, per-trial wall and overhead, best value, counts."""
    trials = result["trials"]
    span = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    work = result["train_s"] + result["eval_s"]
    complete = [t["value"] for t in trials if t["state"] == "complete"]
    return {
        "sweep_s": result["sweep_end"],
        "startup_s": min(t["start"] for t in trials),
        "trial_s": span / len(trials),
        "overhead_s": (span - work) / len(trials),
        "overhead_pct": 100 * (span - work) / span,
        "peak_rss_mb": result["peak_rss_mb"],
        "best": min(complete) if complete else float("nan"),
        "complete": len(complete),
        "pruned": sum(t["state"] == "pruned" for t in trials),
        "steps": result["train_steps"],
    }


def time_to_target(result: dict[str, Any], target: float) -> float:
    """Seconds from spawn to the end of the first completed trial at or below `target` (inf: never)."""
    hits = [t["end"] for t in result["trials"] if t["state"] == "complete" and t["value"] <= target]
    return min(hits) if hits else float("inf")


def anytime_curve(result: dict[str, Any]) -> list[tuple[float, float]]:
    """(seconds from spawn, best completed value so far) at each completed trial that improved it."""
    points, best = [], float("inf")
    for t in sorted(result["trials"], key=lambda t: t["end"]):
        if t["state"] == "complete" and t["value"] < best:
            best = t["value"]
            points.append((t["end"], best))
    return points


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3). A run that never reached the target is inf: interpolating would turn it into
    nan, so quartiles then take the nearest rank."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]
    if not any(math.isinf(v) for v in ordered):
        q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        return q1, median, q3
    last = len(ordered) - 1
    return ordered[round(0.25 * last)], statistics.median(ordered), ordered[round(0.75 * last)]


def machine() -> str:
    """One line: OS, CPU cores and model, RAM, Python and library versions."""
    import importlib.metadata as md

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal")), 0)
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "peft", "optuna"))
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU cores ({cpu}), "
            f"{mem_kb / 2**20:.0f} GiB RAM; Python {platform.python_version()}, {versions}")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------------- child side


class _Timers:
    """Seconds spent in training steps and evaluation loops, for every Trainer in this process."""

    def __init__(self) -> None:
        self.train_s = self.eval_s = 0.0
        self.steps = 0

    def install(self) -> None:
        import transformers.trainer as trainer_module
        from transformers import Trainer, TrainerCallback

        timers = self

        class StepTimer(TrainerCallback):
            started = 0.0

            def on_step_begin(self, args, state, control, **kwargs):
                StepTimer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timers.train_s += time.perf_counter() - StepTimer.started
                timers.steps += 1

        trainer_module.DEFAULT_CALLBACKS.append(StepTimer)
        # Trainer fetches (and collates) a step's batch before on_step_begin: that is training work too.
        _time_method(Trainer, "get_batch_samples", lambda seconds: setattr(timers, "train_s", timers.train_s + seconds))
        _time_method(Trainer, "evaluation_loop", lambda seconds: setattr(timers, "eval_s", timers.eval_s + seconds))


def _time_method(cls, name: str, add) -> None:
    """Wrap `cls.name` so every call's wall time is passed to `add(seconds)`."""
    original = getattr(cls, name)

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            add(time.perf_counter() - started)

    setattr(cls, name, timed)


def rotated(names: list[str], k: int) -> list[str]:
    """`names` started at position k (mod len): repetition k runs the sides in this order, so drift
    and warm caches hit every side alike."""
    shift = k % len(names)
    return names[shift:] + names[:shift]


def _since(spawned: float) -> float:
    return time.monotonic() - spawned


def _trial_records(study, spawned: float) -> list[dict[str, Any]]:
    """Start/end (s since spawn), state, value and steps of every finished trial of `study`."""
    from optuna.trial import TrialState

    # Optuna stamps trials with datetime.now(); map wall clock to the monotonic clock once.
    offset = time.time() - time.monotonic()
    records = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        steps = max(t.intermediate_values, default=0)
        if t.state == TrialState.COMPLETE:
            value = t.value
        else:
            value = t.intermediate_values[steps] if t.intermediate_values else float("nan")
        records.append({
            "number": t.number, "state": t.state.name.lower(), "value": value, "steps": steps,
            "start": t.datetime_start.timestamp() - offset - spawned,
            "end": t.datetime_complete.timestamp() - offset - spawned,
            "params": t.params, "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        })
    return records


def _objective(config: dict[str, Any]):
    """ftsweep's causal_lm objective for the config's data and budget, set up (data tokenized)."""
    objective = _objective_unset(config)
    objective.setup()
    return objective


def _objective_unset(config: dict[str, Any]):
    """The same objective, not set up (for a distributed trial: each rank sets up its own)."""
    from objectives import DataConfig, ModelConfig, TrainBudget, get_objective

    return get_objective("causal_lm")(
        ModelConfig(name_or_path=MODEL), DataConfig(**config["dataset"]), TrainBudget(**config["budget"]),
        seed=config.get("data_seed", DATA_SEED),
    )


def _run_ftsweep(config: dict[str, Any], timers: _Timers) -> Any:
    import io

    import optuna
    import yaml
    from rich.console import Console

    from search.backends import get_backend
    from search.observers.progress import SweepProgress
    from search.sweep import load_sweep
    from search.store.storage import open_storage

    workdir = Path(config["workdir"])
    sweep_file = workdir / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "bench", "objective": config.get("objective", "causal_lm"), "model": MODEL,
        "dataset": config["dataset"],
        "space": SPACE, "metric": "eval_loss",
        # The sweep's `seed` also picks the validation split and seeds training; the search seed
        # alone goes to the sampler, so every run is scored on the same examples.
        "sampler": {"name": "tpe", "args": {"seed": config["seed"]}},
        "pruner": config.get("pruner") or {"name": "median"}, "n_trials": config["n_trials"],
        "budget": config["budget"], "seed": config.get("data_seed", DATA_SEED), "tracking": {"wandb": "off"},
        "output_dir": str(workdir / "runs"),
        **({"timeout": config["timeout"]} if config.get("timeout") else {}),
        **({"backend": config["backend"]} if config.get("backend") else {}),
        **({"storage": config["storage"].format(workdir=workdir)} if config.get("storage") else {}),
        **({"retries": config["retries"]} if config.get("retries") else {}),
        **({"pack": {"slots": config["pack"]}} if config.get("pack", 1) > 1 else {}),
    }, sort_keys=False))
    sweep = load_sweep(sweep_file)
    stop_below = config.get("stop_below")
    # What `ftsweep launch` draws, on a terminal nobody reads: the same refresh work, no output.
    progress = SweepProgress(Console(file=io.StringIO(), force_terminal=True, width=120), metric="eval_loss")

    def listener(event: str, details: dict[str, Any]) -> None:
        progress(event, details)
        trial = details.get("trial")
        # Under Ray there is no optimize loop to stop: its time-to-target is read from the study record.
        if (event == "trial_end" and stop_below is not None and sweep.spec.backend == "optuna"
                and trial.state.name == "COMPLETE" and trial.value <= stop_below):
            details["study"].stop()

    with progress:
        get_backend(sweep.spec.backend)(sweep, listener=listener).run()
    return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def _run_hf(config: dict[str, Any], timers: _Timers) -> Any:
    import gc

    import optuna
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainerCallback, set_seed

    objective = _objective(config)  # the same tokenized data and collator as the other sides
    model_path = objective.check_sources()  # this side loads the model itself, per trial
    gc.unfreeze()  # set-up's gc.freeze() is ftsweep's; a plain HF script does not have it
    seed = objective.seed

    def model_init(trial):
        lora = suggest_lora(trial) if trial is not None else {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
        model = AutoModelForCausalLM.from_pretrained(model_path)
        # Not in the usual recipe: seeding as ftsweep does (before get_peft_model, and Trainer's own seed
        # before training) gives both sides the same adapter init and dropout draws, so the same values
        # and the same pruning decisions -- equal work. It costs microseconds.
        set_seed(seed)
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], **lora))
        set_seed(seed)
        return model

    args = objective.training_arguments({}, str(Path(config["workdir"]) / "hf"))
    args.warmup_steps = 0.0  # a float, so hp_space's warmup ratio is not cast to int 0 (see hp_space)
    state: dict[str, Any] = {}
    stop_below, max_steps = config.get("stop_below"), config["budget"]["max_steps"]

    class StopAtTarget(TrainerCallback):
        def on_evaluate(self, args, st, control, metrics=None, **kwargs):
            trial = getattr(state.get("trainer"), "_trial", None)
            if trial is not None:
                state["study"] = trial.study
            if (stop_below is not None and trial is not None and st.global_step >= max_steps
                    and metrics["eval_loss"] <= stop_below):
                trial.study.stop()  # takes effect when this trial has been told COMPLETE

    trainer = Trainer(
        model_init=model_init, args=args, train_dataset=objective.train_dataset,
        eval_dataset=objective.eval_dataset, data_collator=objective.collator(), callbacks=[StopAtTarget()],
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off Trainer prints every log dict; ftsweep does not
    state["trainer"] = trainer
    kwargs: dict[str, Any] = {"sampler": optuna.samplers.TPESampler(seed=config["seed"])}
    if config.get("pruner") != "default":  # "default": no pruner argument at all (Optuna's MedianPruner())
        kwargs["pruner"] = make_pruner(config.get("pruner"), config["budget"])
    trainer.hyperparameter_search(
        direction="minimize", backend="optuna", n_trials=config["n_trials"], hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_loss"], timeout=config.get("timeout"), **kwargs,
    )
    return state["study"]


def _run_bare(config: dict[str, Any], timers: _Timers) -> Any:
    import gc

    import optuna
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import get_scheduler, set_seed

    objective = _objective(config)
    gc.unfreeze()
    base, budget, seed = objective.base_model, config["budget"], objective.seed
    collator = objective.collator()
    eval_loader = DataLoader(objective.eval_dataset, batch_size=32, collate_fn=collator)
    stop_below = config.get("stop_below")

    def evaluate(model) -> float:
        started = time.perf_counter()
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in eval_loader:
                n = batch["input_ids"].shape[0]
                total += model(**batch).loss.item() * n
                count += n
        model.train()
        timers.eval_s += time.perf_counter() - started
        return total / count

    def run_trial(trial) -> float:
        params = sample_bare(trial)
        set_seed(seed)
        model = get_peft_model(base, LoraConfig(
            task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], r=params["r"],
            lora_alpha=params["lora_alpha"], lora_dropout=params["lora_dropout"]))
        set_seed(seed)
        try:
            model.train()
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=params["learning_rate"],
                                          weight_decay=params["weight_decay"], fused=True)
            # Trainer's reading of a warmup ratio (TrainingArguments.get_warmup_steps).
            warmup = math.ceil(budget["max_steps"] * params["warmup_steps"])
            scheduler = get_scheduler(params["lr_scheduler_type"], optimizer, num_warmup_steps=warmup,
                                      num_training_steps=budget["max_steps"])
            generator = torch.Generator().manual_seed(seed)
            loader = DataLoader(objective.train_dataset, batch_size=budget["batch_size"], shuffle=True,
                                collate_fn=collator, generator=generator)
            step, value, batches = 0, float("nan"), iter(loader)
            while step < budget["max_steps"]:
                started = time.perf_counter()
                batch = next(batches, None)
                if batch is None:  # a new epoch
                    batches = iter(loader)
                    batch = next(batches)
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                timers.train_s += time.perf_counter() - started
                timers.steps += 1
                if step % budget["eval_every"] == 0 or step == budget["max_steps"]:
                    value = evaluate(model)
                    trial.report(value, step)
                    if step < budget["max_steps"] and trial.should_prune():
                        raise optuna.TrialPruned()
            return value
        finally:
            model.unload()
            if hasattr(base, "peft_config"):
                del base.peft_config

    def stop(study, trial) -> None:
        if stop_below is not None and trial.state.name == "COMPLETE" and trial.value <= stop_below:
            study.stop()

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=config["seed"]),
                                pruner=make_pruner(config.get("pruner"), budget))
    study.optimize(run_trial, n_trials=config["n_trials"], timeout=config.get("timeout"), callbacks=[stop])
    return study


def _refreeze_objective():
    from objectives import get_objective

    class RefreezeObjective(get_objective("causal_lm")):
        """causal_lm, plus `gc.freeze()` after every trial: what the first trial, the study storage and
        the sampler left alive is no longer walked by the next trials' full collections."""

        def run_trial(self, *args, **kwargs):
            import gc

            try:
                return super().run_trial(*args, **kwargs)
            finally:
                gc.freeze()

    return RefreezeObjective


def __getattr__(name: str):
    # `objective: _bench_common:RefreezeObjective` in a sweep file (diagnostic variant, --variants).
    if name == "RefreezeObjective":
        return _refreeze_objective()
    raise AttributeError(name)


RUNNERS = {"ftsweep": _run_ftsweep, "hf": _run_hf, "bare": _run_bare}


def child_main(config_path: str, result_path: str) -> None:
    """Run one side (in its own interpreter) and write its figures as JSON."""
    import resource

    config = json.loads(Path(config_path).read_text())
    spawned = config["spawned"]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    timers = _Timers()
    timers.install()
    study = RUNNERS[config["side"]](config, timers)
    sweep_end = _since(spawned)
    result = {
        "side": config["side"], "sweep_end": sweep_end, "train_s": timers.train_s, "eval_s": timers.eval_s,
        "train_steps": timers.steps, "trials": _trial_records(study, spawned),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    child_main(*sys.argv[1:3])
