"""`ftsweep gate`: promote a candidate only when it beats the champion on the same held-out test set.

    ftsweep gate --candidate runs/new --champion runs/prod --metric f1_macro --margin 0.01 \\
                 --max-metric latency_ms=20 --out verdict.json

Each side is a trained run (the directory `ftsweep train` wrote: run.yaml + adapter/) or, for either,
a winner.yaml, which the gate first trains with the run's own settings (into `--work-dir`, else a
temporary directory). Both adapters are then evaluated on the test split their runs hold out, with
the objective's own metrics (eval_loss and accuracy/precision/recall/F1 for classification;
eval_loss and perplexity for causal_lm, BLEU/ROUGE/METEOR of greedy answers when asked for), plus
latency_ms and trainable_params (the adapter's size).

The two test sets must be the same rows. A run's test split is carved from its data with its seed
and `dataset.test_fraction` (or is a named split); the gate reads both and compares their contents
(the objective's columns, row by row). When they differ it refuses, naming the setting that differs
(seed, test_fraction, source, ...) and the `--set` that fixes it.

Exit status: 0 when the candidate beats the champion on `--metric` by more than the margin, in the
metric's direction, and meets every `--max-metric`/`--min-metric`; 1 otherwise; 2 on bad input.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives import load_splits
from spaces import ConfigError

from ..results.tables import format_value
from ..settings import ConstraintSpec
from ..sweep import load_run, run_objective
from .train import train_run
from .trained import TrainedRun, load_adapter, load_trained

EXIT_PASS, EXIT_FAIL = 0, 1
# Measured by a trial but not by one evaluation pass: a gate on it would compare nothing.
NOT_MEASURED = ("peak_memory_mb",)


# ---------------------------------------------------------------------------------------- the test set


@dataclass
class HeldOut:
    """What a run is tested on: the rows' fingerprint and the settings that carved them.

    `fingerprint` hashes the test rows' values in the objective's column order (input, then target),
    so two runs share a test set exactly when their fingerprints are equal.
    """

    fingerprint: str
    rows: int
    settings: dict[str, Any]
    data: Any = field(default=None, repr=False)  # the raw rows (a datasets.Dataset)

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "rows": self.rows, "settings": self.settings}


def held_out(run, objective_cls, *, source: str | None = None) -> HeldOut:
    """Read the run's held-out test split (as `ftsweep train` carves it) and fingerprint it.

    Example:
        >>> run, cls = load_run(trained_dir / "run.yaml")  # what `ftsweep train` wrote (conftest.py)
        >>> test_set = held_out(run, cls)
        >>> test_set.rows, len(test_set.fingerprint)
        (16, 16)
    """
    objective = run_objective(run, objective_cls, source=source)
    columns = objective.required_columns()
    data = run.dataset
    test = load_splits(data, seed=run.seed, columns=columns, source=source).test
    if test is None:
        raise ConfigError("this run holds out no test split, so there is nothing to gate on", source=source,
                          key="dataset.test_fraction", value=data.test_fraction,
                          hint="Fix: train it with a test split: --set dataset.test_fraction=0.1 (or dataset.test_split).")
    digest = hashlib.sha256()
    for row in test:
        digest.update(json.dumps([row[c] for c in columns], sort_keys=True, default=str).encode())
        digest.update(b"\n")
    source_path = Path(data.source).expanduser()
    settings: dict[str, Any] = {
        # A local file is named by its absolute path, so `data.jsonl` and `./data.jsonl` are one source.
        "dataset.source": str(source_path.resolve()) if source_path.exists() else data.source,
        "dataset.config_name": data.config_name,
        "dataset.train_split": data.train_split,
        "dataset.test_split": data.test_split,
    }
    if data.test_split is None:  # carved out of train: its seed and share decide which rows
        settings.update({"dataset.test_fraction": data.test_fraction, "seed": run.seed})
    settings["dataset.max_eval_examples"] = data.max_eval_examples
    settings["columns"] = columns
    return HeldOut(digest.hexdigest()[:16], len(test), settings, test)


def check_same_held_out(candidate: HeldOut, champion: HeldOut) -> None:
    """Raise ConfigError, naming the first setting that differs and how to align it, unless both runs
    are tested on the same rows."""
    if candidate.fingerprint == champion.fingerprint:
        return
    differing = [k for k in candidate.settings if candidate.settings[k] != champion.settings.get(k)]
    differing += [k for k in champion.settings if k not in candidate.settings]
    if not differing:
        raise ConfigError(
            f"the candidate and the champion would be tested on different rows ({candidate.rows} vs {champion.rows}; "
            f"fingerprints {candidate.fingerprint} vs {champion.fingerprint}) although their split settings agree: "
            "the data changed between them", key="dataset.source", value=candidate.settings["dataset.source"],
            hint="Fix: evaluate both on the same data file (retrain one of them on it).")
    key = differing[0]
    theirs, ours = champion.settings.get(key, "(not used)"), candidate.settings.get(key, "(not used)")
    if key == "columns":
        fix = ("Fix: point dataset.*_column of the candidate at the champion's columns "
               f"({', '.join(map(str, theirs))}) and retrain it.")
    else:
        value = theirs if theirs not in (None, "(not used)") else "null"
        fix = (f"Fix: train the candidate with the champion's split: ftsweep train winner.yaml --set {key}={value} "
               f"(or give the gate the candidate's winner.yaml with --set {key}={value}).")
    others = f" (also differ: {', '.join(differing[1:])})" if len(differing) > 1 else ""
    raise ConfigError(
        f"the candidate and the champion are tested on different test sets: {key} is {ours!r} for the "
        f"candidate and {theirs!r} for the champion{others}; their metrics would not be comparable",
        key=key, value=ours, hint=fix)


# ---------------------------------------------------------------------------------------- sides


@dataclass
class Side:
    """The candidate or the champion: a trained run, or a winner.yaml still to train."""

    role: str
    ref: str
    run: Any  # RunSpec
    objective_cls: type
    source: str
    trained: TrainedRun | None = None
    test_set: HeldOut | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    examples: int = 0  # test rows actually evaluated (causal_lm drops prompts longer than max_seq_length)
    trained_by_gate: bool = False
    kept: bool = True  # False: trained into a temporary directory, gone once the gate is done


def resolve_side(ref: str, role: str, overrides: Sequence[str] = ()) -> Side:
    """A side from a trained directory (or its adapter/ or run.yaml), a winner.yaml, or an export directory."""
    path = Path(ref).expanduser()
    if not path.exists():
        raise ConfigError(f"no such {role}", key=f"--{role}", value=ref,
                          hint="Fix: a directory `ftsweep train` wrote, or a winner.yaml from `ftsweep export`.")
    winner = path / "winner.yaml" if path.is_dir() else path
    untrained = winner.is_file() and winner.suffix in (".yaml", ".yml") and \
        not (winner.parent / "adapter" / "adapter_config.json").exists()
    if untrained:
        run, cls = load_run(winner, list(overrides))
        return Side(role, ref, run, cls, str(winner))
    if overrides:
        raise ConfigError(f"--set changes a winner.yaml the gate trains; this {role} is already trained",
                          key="--set", value=list(overrides),
                          hint=f"Fix: pass the {role}'s winner.yaml instead, or drop --set.")
    try:
        trained = load_trained(path)
    except ConfigError as exc:
        exc.key = f"--{role}"
        raise
    return Side(role, ref, trained.run, trained.objective_cls, str(trained.run_file), trained)


def train_side(side: Side, work_dir: Path) -> None:
    """Train a winner.yaml side with its run's own settings into `work_dir/<role>`."""
    out = work_dir / side.role
    run = side.run.model_copy(update={"output_dir": str(out)})
    train_run(run, side.objective_cls, source=side.source, force=True)  # the gate's own directory
    side.trained = load_trained(out)
    side.trained_by_gate = True


def evaluate_side(side: Side, *, max_seq_length: int, wanted: Sequence[str]) -> None:
    """Evaluate the side's adapter on its test split; fills `side.metrics` and `side.examples`."""
    import torch
    from peft import get_peft_model_state_dict

    budget = side.run.budget.model_copy(update={"max_seq_length": max_seq_length})
    objective, model = load_adapter(side.trained, budget=budget, metrics=wanted)
    try:
        if objective.test_dataset is None:  # held_out refused this already; the objective read the same data
            raise ConfigError("this run holds out no test split", source=side.source, key="dataset.test_fraction")
        # Metrics with per-row data (fairness groups) read the test split's.
        measured = objective.evaluate(model, objective.test_dataset, split="test")
        available = side.objective_cls.available_metrics()
        metrics = {k: v for k, v in measured.items() if k in available}
        metrics["trainable_params"] = float(sum(t.numel() for t in get_peft_model_state_dict(model).values()))
        # BLEU/ROUGE/METEOR of greedy answers to the test prompts, when the task has them and one is asked for.
        metrics.update(objective.task.evaluate_generation(model, objective.tokenizer, side.test_set.data, wanted))
        side.metrics = metrics
        side.examples = len(objective.test_dataset)
    finally:
        del model, objective
        gc.unfreeze()  # set-up froze the model's objects out of the collector; this side is done with them
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- the verdict


@dataclass
class Verdict:
    """The gate's decision and everything it rests on (`to_dict` is what --out writes)."""

    passed: bool
    metric: str
    direction: str
    margin: dict[str, float]
    required_improvement: float
    improvement: float
    candidate: Side
    champion: Side
    test_set: HeldOut
    max_seq_length: int
    bounds: list[ConstraintSpec]  # --max-metric / --min-metric
    reasons: list[str]
    notes: list[str] = field(default_factory=list)  # worth knowing, not deciding

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.passed else EXIT_FAIL

    def to_dict(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            kept = s.trained is not None and s.kept
            return {"ref": s.ref, "run": s.run.name, "trained_by_gate": s.trained_by_gate,
                    "directory": str(s.trained.directory) if kept else None,
                    "adapter": str(s.trained.adapter_dir) if kept else None,
                    "examples": s.examples, "metrics": s.metrics}

        return {
            "decision": "pass" if self.passed else "fail",
            "exit_code": self.exit_code,
            "metric": self.metric,
            "direction": self.direction,
            "margin": self.margin,
            "required_improvement": self.required_improvement,
            "improvement": self.improvement,
            "candidate": side(self.candidate),
            "champion": side(self.champion),
            "test_set": {**self.test_set.to_dict(), "max_seq_length": self.max_seq_length},
            "constraints": [{"metric": b.metric, b.kind: b.limit, "value": self.candidate.metrics.get(b.metric),
                             "satisfied": b.satisfied(self.candidate.metrics)} for b in self.bounds],
            "reasons": self.reasons,
            "notes": self.notes,
        }


def parse_bounds(max_metrics: Sequence[str] = (), min_metrics: Sequence[str] = ()) -> list[ConstraintSpec]:
    """--max-metric / --min-metric as the sweep's own constraints, test_NAME read as NAME.

    Example:
        >>> [bound] = parse_bounds(max_metrics=["latency_ms=20"])
        >>> bound.describe()
        'latency_ms <= 20'
    """
    bounds = []
    for kind, texts in (("max", max_metrics), ("min", min_metrics)):
        for text in texts:
            name, sep, raw = text.partition("=")
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not sep or not name.strip() or not math.isfinite(value):
                raise ConfigError("a bound must look like NAME=NUMBER", key=f"--{kind}-metric", value=text,
                                  hint=f"Fix: e.g. --{kind}-metric latency_ms=20")
            bounds.append(ConstraintSpec(metric=_metric_name(name.strip()), **{kind: value}))
    return bounds


def _metric_name(name: str) -> str:
    # `ftsweep train` writes test metrics as test_loss, test_accuracy: the same metrics, on the test split.
    if name == "test_loss":
        return "eval_loss"
    return name.removeprefix("test_")


def _check_metric(side: Side, name: str, key: str) -> str:
    objective_cls = side.objective_cls
    direction = objective_cls.check_metric(name, key=key)
    # e.g. a fairness gap needs the run's dataset.group_column
    objective_cls.check_metric_available(name, source=side.source, key=key, data=side.run.dataset)
    if name in NOT_MEASURED:
        raise ConfigError("the gate does not measure this metric (it is a training cost)", key=key, value=name,
                          allowed=sorted(set(objective_cls.available_metrics()) - set(NOT_MEASURED)))
    return direction


def default_metric(run) -> tuple[str, str | None]:
    """The run's sweep metric and direction from its provenance (the first of several), else eval_loss."""
    metric, direction = run.provenance.get("metric"), run.provenance.get("direction")
    if not metric:
        return "eval_loss", None
    # A multi-objective sweep records "f1_macro, accuracy_group_gap" and "maximize, minimize".
    return str(metric).split(",")[0].strip(), str(direction).split(",")[0].strip() if direction else None


def decide(candidate: float, champion: float, *, direction: str, margin: float = 0.0,
           relative_margin: float | None = None) -> tuple[bool, float, float]:
    """(beats, improvement, required improvement): `improvement` is how much better the candidate is in
    the metric's direction; it beats the champion when that is more than the (absolute, or relative
    to the champion's value) margin.

    Example:
        >>> decide(0.80, 0.75, direction="maximize", margin=0.02)[0]
        True
        >>> decide(0.60, 0.62, direction="minimize", relative_margin=0.05)[0]  # 3% better, 5% asked
        False
    """
    improvement = candidate - champion if direction == "maximize" else champion - candidate
    required = margin if relative_margin is None else relative_margin * abs(champion)
    beats = math.isfinite(improvement) and improvement > required
    return beats, improvement, required


def gate(candidate: str, champion: str, *, metric: str | None = None, direction: str | None = None,
         margin: float = 0.0, relative_margin: float | None = None, max_metrics: Sequence[str] = (),
         min_metrics: Sequence[str] = (), work_dir: str | Path | None = None, overrides: Sequence[str] = (),
         max_seq_length: int | None = None) -> Verdict:
    """Evaluate candidate and champion on the same held-out test set and decide whether to promote.

    Raises ConfigError (bad input, different test sets) before anything is trained or evaluated.

    Example:
        >>> verdict = gate(str(trained_dir), str(trained_dir), metric="eval_loss")  # a run against itself
        >>> verdict.passed, verdict.exit_code, verdict.improvement
        (False, 1, 0.0)
    """
    if margin < 0 or (relative_margin is not None and relative_margin < 0):
        raise ConfigError("a margin cannot be negative", key="--relative-margin" if relative_margin else "--margin",
                          value=relative_margin if relative_margin is not None else margin)
    if max_seq_length is not None and max_seq_length <= 8:
        raise ConfigError("--max-seq-length must be more than 8", key="--max-seq-length", value=max_seq_length)
    cand = resolve_side(candidate, "candidate", overrides)
    champ = resolve_side(champion, "champion")
    if cand.objective_cls.name != champ.objective_cls.name:
        raise ConfigError(
            f"the candidate is a {cand.objective_cls.name} run and the champion a {champ.objective_cls.name} run: "
            "their metrics are not comparable", key="objective.name", value=cand.objective_cls.name)

    # Everything checkable without training comes first: the metric, the bounds, the test sets.
    default, default_direction = default_metric(cand.run)
    name = _metric_name(metric or default)
    natural = _check_metric(cand, name, "--metric")
    _check_metric(champ, name, "--metric")
    direction = direction or (default_direction if name == _metric_name(default) and default_direction else natural)
    bounds = parse_bounds(max_metrics, min_metrics)
    for bound in bounds:
        _check_metric(cand, bound.metric, f"--{bound.kind}-metric")
    cand.test_set = held_out(cand.run, cand.objective_cls, source=cand.source)
    champ.test_set = held_out(champ.run, champ.objective_cls, source=champ.source)
    check_same_held_out(cand.test_set, champ.test_set)
    # One truncation for both: a longer max_seq_length on one side would score it on more of each example.
    length = max_seq_length or max(cand.run.budget.max_seq_length, champ.run.budget.max_seq_length)
    wanted = list(dict.fromkeys([name, *(b.metric for b in bounds)]))

    with tempfile.TemporaryDirectory(prefix="ftsweep-gate-train-") as tmp:
        for side in (cand, champ):
            if side.trained is None:
                train_side(side, Path(work_dir).expanduser() if work_dir else Path(tmp))
                side.kept = work_dir is not None
            evaluate_side(side, max_seq_length=length, wanted=wanted)
    if cand.examples != champ.examples:
        raise ConfigError(
            f"the candidate was evaluated on {cand.examples} test examples and the champion on {champ.examples}: "
            f"their tokenizers keep different prompts within max_seq_length {length}",
            key="--max-seq-length", value=length, hint="Fix: pass a larger --max-seq-length.")

    for side in (cand, champ):
        if name not in side.metrics:
            raise ConfigError(f"the {side.role}'s evaluation did not produce this metric", key="--metric", value=name,
                              allowed=sorted(side.metrics))
    beats, improvement, required = decide(cand.metrics[name], champ.metrics[name], direction=direction,
                                          margin=margin, relative_margin=relative_margin)
    better = "higher" if direction == "maximize" else "lower"
    margin_text = f"{relative_margin:.2%} of the champion's value ({required:.4g})" if relative_margin is not None \
        else f"{margin:g}"
    reasons = [(
        f"candidate {name} {cand.metrics[name]:.6g} vs champion {champ.metrics[name]:.6g} ({better} is better): "
        f"improvement {improvement:.4g} is {'more' if beats else 'not more'} than the margin {margin_text}"
    )]
    passed = beats
    for bound in bounds:
        value = cand.metrics.get(bound.metric)
        ok = bound.satisfied(cand.metrics)
        passed = passed and ok
        shown = "not measured" if value is None else f"{value:.6g}"
        reasons.append(f"constraint {bound.describe()}: candidate {shown}, {'met' if ok else 'NOT met'}")
    notes = [note for side in (cand, champ) if (note := _changed_since_training(side, length))]
    return Verdict(passed, name, direction, {"relative": relative_margin} if relative_margin is not None
                   else {"absolute": margin}, required, improvement, cand, champ, cand.test_set, length, bounds,
                   reasons, notes)


def _changed_since_training(side: Side, max_seq_length: int) -> str | None:
    """A note when the side's test loss now differs from the one `ftsweep train` recorded: its test rows
    (or the data they were carved from) changed since, so it may have trained on rows it is now tested on."""
    if max_seq_length != side.run.budget.max_seq_length:
        return None  # evaluated with another truncation: a different loss is expected
    try:
        recorded = json.loads((side.trained.directory / "metrics.json").read_text())["metrics"]["test_loss"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = side.metrics.get("eval_loss")
    if now is None or math.isclose(now, recorded, rel_tol=1e-3, abs_tol=1e-6):
        return None
    return (f"the {side.role}'s test loss was {recorded:.6g} when it was trained and is {now:.6g} now: its data or "
            "test split changed since, so it may have trained on rows it is now tested on")


# ---------------------------------------------------------------------------------------- showing it


def render(verdict: Verdict):
    """A rich Table: every metric of both sides on the test set, the gate's metric first."""
    from rich.table import Table

    cand, champ = verdict.candidate.metrics, verdict.champion.metrics
    names = [verdict.metric, *(n for n in cand if n != verdict.metric and n in champ)]
    table = Table(title=f"Gate on the held-out test set ({verdict.test_set.rows} rows, "
                        f"fingerprint {verdict.test_set.fingerprint})")
    for column in ("metric", "candidate", "champion", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for n in names:
        label = f"{n} ({verdict.direction}) *" if n == verdict.metric else n
        table.add_row(label, format_value(cand[n]), format_value(champ[n]), format_value(cand[n] - champ[n]))
    return table
