"""The sweep file: one YAML document that says everything a sweep needs.

    name: demo
    objective: causal_lm
    model: bundled:tiny-support-lm
    dataset: bundled:support-qa
    space: lora-quick              # a preset, an extended preset, or an inline space
    metric: eval_loss              # direction defaults to the metric's natural one
    sampler: {name: tpe, args: {n_startup_trials: 5}}
    pruner: {name: median, args: {n_warmup_steps: 10}}
    n_trials: 16
    budget: {max_steps: 40, eval_every: 10, batch_size: 8, max_seq_length: 64}

`load_sweep` reads it safely, applies `--set key.path=value` overrides, validates every key
(unknown keys are errors) and resolves the space and the objective, so a bad sweep fails before
anything is trained or written.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from objectives import DataReport, get_objective, validate_data
from objectives.adapters.peft_methods import check_method_params
from objectives.data.augmentation import check_augmentation
from objectives.engine.packed import PACK_METRICS, PER_SLOT_PARAMS
from objectives.evaluation.harness import is_harness_metric
from spaces import ConfigError, SearchSpace, finite_values, from_validation_error, load_yaml, resolve_space

from .components import BACKENDS, PRUNERS, build_pruner, check_pruner, check_sampler, pauses, prunes
from .components.schedulers import AshaScheduler, HyperbandScheduler, expected_steps, rung_plan
from .settings import ComponentSpec, RunSpec, SweepSpec
from .store.storage import default_storage_url

BUNDLED_SWEEPS = Path(__file__).parent / "sweeps"


@dataclass(frozen=True)
class Checked:
    """What `Sweep.check` found: the data report (its warnings and accepted errors) and the metric plans."""

    data: DataReport
    metric_plans: list


def _data_error(sweep: "Sweep", report: DataReport) -> ConfigError:
    """The ConfigError that stops a launch on data errors: how many, and the first one, said once."""
    first = report.errors[0]
    headline = f"the data has {len(report.errors)} error(s); first [{first.check}]"
    cause = first.cause
    if cause is not None:  # a config error already names its file, key and value: say them once
        return ConfigError(f"{headline}: {cause.message}", source=cause.source or sweep.source, key=cause.key,
                           value=cause.value, allowed=cause.allowed, hint=cause.hint or first.fix)
    data = sweep.spec.dataset.source
    named = {} if data in first.message else {"value": data}  # a file's findings start with its name
    return ConfigError(f"{headline}: {first.message}", source=sweep.source, key="dataset.source", **named,
                       hint=first.fix or "Fix: see `ftsweep validate-data SWEEP` for the full report.")


@dataclass
class Sweep:
    """A sweep file resolved into the objects the backends use.

    Example:
        >>> sweep = load_sweep("demo")
        >>> sweep.spec.objective.name, sweep.directions
        ('causal_lm', ['minimize'])
    """

    spec: SweepSpec
    space: SearchSpace
    objective_cls: type
    directions: list[str]  # one per optimized metric, in the order of `metric_names`
    source: str
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # configs to try first (--enqueue)
    # The data-check errors this launch accepted (`dataset.checks`), recorded on the study; None where the
    # data was not checked (a worker joining a study), so the launch's record stays.
    accepted_findings: list[dict[str, Any]] | None = None
    checked: "Checked | None" = None  # what `check` found, once it passed
    # `launch --accept-changes`: a relaunch may change what makes trials comparable (budget, data, seed...);
    # the study records it as a new sweep revision (search/store/relaunch.py) instead of refusing it.
    accept_changes: bool = False

    def check(self, *, show: Callable[[DataReport], None] | None = None) -> "Checked":
        """Everything a launch refuses, in one place and before anything is created on disk: the space against
        the objective and model (a PEFT method, target module or dropout it rejects), the data (`ftsweep
        validate-data`: errors raise, accepted ones are recorded), a classifier head that does not fit the
        data's labels, the task metrics against the data, and the
        backend's own checks (`Backend.check`: Ray's scheduler translation and cluster fit). `launch`, `launch
        --dry-run` and `Backend.run()` call it; it runs once per Sweep. `show` gets a data report that has
        errors or warnings, before a ConfigError is raised for its errors.

        Example:
            >>> load_sweep("demo").check().data.errors
            []
        """
        if self.checked is not None:
            return self.checked
        objective = self.make_objective()
        objective.check_space(self.space)
        report = validate_data(objective)
        if (report.errors or report.warnings) and show is not None:
            show(report)
        if report.errors:
            raise _data_error(self, report)
        # After the data checks (it reads the data's classes): a classifier checkpoint whose head has another
        # number of labels would fail every trial's set-up.
        objective.check_models(self.space)
        self.accepted_findings = [{"check": f.check, "message": f.message, "split": f.split, "count": f.count}
                                  for f in report.accepted]
        plans = self.plan_metrics(objective)
        BACKENDS.get(self.spec.backend).check(self)
        self.checked = Checked(report, plans)
        return self.checked

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.spec.metrics]

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    @property
    def direction(self) -> str:
        """The direction of the (first) optimized metric."""
        return self.directions[0]

    @property
    def metric_label(self) -> str:
        """'eval_loss', or 'eval_loss, trainable_params' for a multi-objective sweep."""
        return ", ".join(self.metric_names)

    @property
    def requested_metrics(self) -> list[str]:
        """Every metric the objective must compute: optimized, recorded and constrained ones."""
        names = [*self.metric_names, *self.spec.record_metrics, *(c.metric for c in self.spec.constraints)]
        return list(dict.fromkeys(names))

    @property
    def study_name(self) -> str:
        return self.spec.study_name or self.spec.name

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output_dir or Path("runs") / self.spec.name).expanduser().resolve()

    @property
    def storage_url(self) -> str:
        if self.spec.storage:
            return self.spec.storage
        return default_storage_url(self.output_dir, self.study_name)

    def plan_metrics(self, objective=None):
        """Check the task metrics against the data (a ConfigError before any trial when it cannot give them),
        and keep what the check settled (e.g. choices inferred from the answers) in the sweep's
        `objective.args`, so every worker, `export` and `train` score the same; returns the plans (the
        task's, the lm-eval evaluation's; each `line()` says what is scored)."""
        plans = (objective or self.make_objective()).plan_metrics()
        resolved = {k: v for plan in plans for k, v in plan.resolved_args().items()}
        if resolved:
            spec = self.spec
            args = spec.objective.args.model_copy(update=resolved)
            self.spec = spec.model_copy(update={"objective": spec.objective.model_copy(update={"args": args})})
        return plans

    def to_payload(self) -> str:
        """The resolved sweep as JSON, to rebuild it in another process (a Ray worker)."""
        return json.dumps({"spec": self.spec.model_dump(mode="json"), "source": self.source}, sort_keys=True)

    @classmethod
    def from_payload(cls, payload: str) -> "Sweep":
        data = json.loads(payload)
        return _resolve(SweepSpec.model_validate(data["spec"]), data["source"])

    def budget_preview(self) -> list[str]:
        """What the budget buys under the sweep's pruner, for `launch --dry-run` (Determined's preview-search):
        configurations per rung, steps per configuration there, full-length trials, steps in all, and which
        budget.sweep rule would stop the sweep first.

        Example:
            >>> load_sweep("demo", ["pruner=asha_promote"]).budget_preview()[0]
            'asha_promote: rungs at steps 10, 30 of 60, one in 3 goes on from each rung'
        """
        spec, budget = self.spec, self.spec.budget
        n, max_steps = spec.n_trials, budget.max_steps
        entry = PRUNERS.entry(spec.pruner.name, source=self.source, key="pruner.name")
        lines: list[str] = []
        plan = None
        if entry.capabilities.get("optuna") and (entry.capabilities.get("pauses") or entry.name in (
                "successive_halving", "hyperband")):
            pruner = build_pruner(spec.pruner, budget=budget, source=self.source)
            eta = getattr(pruner, "reduction_factor", None) or getattr(pruner, "_reduction_factor", 3)
            rungs = getattr(pruner, "rungs", None)
            if rungs is None:  # Optuna's successive halving / hyperband: geometric rungs from min_resource
                first = int(spec.pruner.args.get("min_resource", budget.eval_every) or budget.eval_every)
                rungs = AshaScheduler(first, int(eta), max_steps, budget.eval_every).rungs
            if isinstance(pruner, HyperbandScheduler):
                rungs = pruner.brackets[0]
            how = "goes on from" if entry.capabilities.get("pauses") else "is kept at"
            lines.append(f"{entry.name}: rungs at steps {', '.join(map(str, rungs))} of {max_steps}, one in {int(eta)} "
                         f"{how} each rung" + (" (the most aggressive bracket; others start higher)"
                                               if entry.name.startswith("hyperband") else ""))
            if n is not None:
                plan = rung_plan(n, rungs, int(eta), max_steps)
                for step, configs in plan:
                    lines.append(f"  {configs:6.1f} configuration(s) reach step {step}")
                lines.append(f"  ≈ {expected_steps(plan):.0f} steps in all ({expected_steps(plan) / n:.1f} per "
                             f"configuration), {plan[-1][1]:.1f} full-length trial(s)")
        elif n is not None:
            stops = "" if entry.name == "none" else (f" at most: how many the {entry.name} pruner stops depends on "
                                                     "the curves (`ftsweep replay` on an earlier study shows it)")
            plan = [(max_steps, float(n))]
            lines.append(f"{entry.name}: {n} trials x {max_steps} steps = {n * max_steps} steps{stops}")
        rules = budget.sweep
        if rules is not None:
            total = expected_steps(plan) if plan else None
            if rules.trial_steps is not None and total is not None:
                per = total / n
                verdict = (f"stops the sweep after ≈ {rules.trial_steps / per:.0f} of {n} configurations"
                           if rules.trial_steps < total else "leaves n_trials the limit")
                lines.append(f"budget.sweep.trial_steps {rules.trial_steps}: {verdict}")
            for name in ("hours", "gpu_hours"):
                if getattr(rules, name) is not None:
                    lines.append(f"budget.sweep.{name} {getattr(rules, name):g}: the seconds a step costs are known "
                                 "once trials run (`ftsweep status` shows the rate)")
        return lines

    def make_objective(self):
        """A fresh, not yet set-up objective instance for one worker."""
        spec = self.spec
        return self.objective_cls(
            spec.model, spec.dataset, spec.budget, seed=spec.seed, options=spec.objective.args,
            output_dir=self.output_dir, source=self.source, metrics=self.requested_metrics,
            target=(self.metric_names[0], self.directions[0]), augmentation=spec.augmentation,
            evaluation=spec.evaluation,
        )


def find_sweep_file(path_or_name: str | Path) -> Path:
    """A sweep file path, or the name of a sweep bundled with ftsweep (e.g. 'demo')."""
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    bundled = BUNDLED_SWEEPS / f"{path_or_name}.yaml"
    if bundled.exists():
        return bundled
    raise ConfigError(
        "sweep file not found", value=str(path_or_name),
        allowed=f"an existing file, or a bundled sweep: {bundled_sweeps()}",
    )


def bundled_sweeps() -> list[str]:
    return sorted(p.stem for p in BUNDLED_SWEEPS.glob("*.yaml"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`budget.max_steps=20` -> (['budget', 'max_steps'], 20). Values are YAML scalars/lists, read safely."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError("an override must look like key.path=value", key="--set", value=text)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the value is not valid YAML ({exc.problem})", key="--set", value=text) from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `key.path=value` into a copy of the raw sweep mapping."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if isinstance(child, str) and part in ("objective", "metric", "sampler", "pruner"):
                child = node[part] = {"name": child}
            elif isinstance(child, str) and part in ("model", "dataset"):
                child = node[part] = {"name_or_path" if part == "model" else "source": child}
            elif isinstance(child, str) and part == "space":
                child = node[part] = {"preset": child}
            elif child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"cannot set a key inside '{'.'.join(path[: depth + 1])}', which is {child!r}",
                    key="--set", value=text,
                )
            node = child
        node[path[-1]] = value
    return data


def load_sweep(path_or_name: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read, override, validate and resolve a sweep file. Raises ConfigError on any bad input.

    Example:
        >>> load_sweep("demo", ["budget.max_steps=20"]).spec.budget.max_steps
        20
    """
    path = find_sweep_file(path_or_name)
    source = str(path)
    spec = _read_validated(path, SweepSpec, overrides)
    return _resolve(spec, source)


# The pruner of a sweep file that names none, where it can run (the Optuna backend, n_trials, one metric): pausing
# successive halving, one in two going on from each rung. Simulated on 216 recorded curves of each of two tasks
# over 100 seeds (scripts/bench_search.py, docs/benchmarks.md), it reached the best configuration in 0.26x and
# 0.25x the steps of random search and 0.71x / 0.40x those of TPE without pruning, in every seed; TPE with
# Optuna's median rule got there in 39 % / 21 % of the seeds, asha_promote with reduction factor 3 in 16 % / 6 %:
# the best configurations start slowly, and a rule keeping one in three stops them.
DEFAULT_PRUNER = ComponentSpec(name="asha_promote", args={"reduction_factor": 2})
FALLBACK_PRUNER = ComponentSpec(name="median")  # Ray, a timeout-only sweep: Optuna's MedianPruner / Ray's rule


def default_pruner(spec: SweepSpec) -> ComponentSpec:
    """The pruner a sweep gets when its file names none.

    Example:
        >>> from search.settings import SweepSpec
        >>> default_pruner(SweepSpec(name="s", objective="causal_lm", model="m", dataset="d", space="lora")).name
        'asha_promote'
    """
    if BACKENDS.supports(spec.backend, "optuna_pruners") and spec.n_trials is not None and len(spec.metrics) == 1:
        return DEFAULT_PRUNER.model_copy(deep=True)
    return FALLBACK_PRUNER.model_copy(deep=True)


def _resolve(spec: SweepSpec, source: str) -> Sweep:
    BACKENDS.entry(spec.backend, source=source)  # an unknown backend, listing the registered ones
    objective_cls = get_objective(spec.objective.name)
    if "pruner" not in spec.model_fields_set and len(spec.metrics) == 1:
        spec = spec.model_copy(update={"pruner": default_pruner(spec)})
    if not prunes(spec.pruner.name) and "eval_every" not in spec.budget.model_fields_set:
        # Evaluate only as often as pruning needs: with no pruner, intermediate evaluations decide
        # nothing, so a trial evaluates once, at its end (set budget.eval_every for learning curves).
        spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"eval_every": spec.budget.max_steps})})
    space = resolve_space(spec.space, source=source, key="space")
    # Params that only steer others (inputs of a derived param, switches in a `when`) are not applied
    # to the trainer themselves, so the objective need not know them.
    steering = [name for name in space.names if space.dependents(name)]
    objective_cls.check_params(space.names, auxiliary=steering, source=source)
    check_method_params(space, source=source)
    check_augmentation(space, spec.augmentation, task=objective_cls, source=source, data=spec.dataset,
                       options=spec.objective.args)
    directions = _check_metrics(spec, objective_cls, source)
    if len(directions) > 1:
        spec = _multi_objective(spec, source)
    check_sampler(spec.sampler, space, source=source, n_objectives=len(directions))
    if spec.pack.slots > 1:
        _check_pack(spec, space, objective_cls, source)
    if spec.resources.devices_per_trial > 1:
        _check_distributed(spec, source)
        if spec.resources.strategy == "fsdp" and "loraplus_lr_ratio" in space.names:
            raise ConfigError("FSDP builds the optimizer over its sharded parameters itself, and LoRA+ hands Trainer "
                              "one built beforehand", source=source, key="space.params.loraplus_lr_ratio",
                              hint="Fix: strategy: ddp with LoRA+, or remove loraplus_lr_ratio.")
    elif spec.resources.strategy == "fsdp":
        raise ConfigError("strategy fsdp shards a trial over its processes, and devices_per_trial is 1",
                          source=source, key="resources.strategy", value="fsdp",
                          hint="Fix: resources.devices_per_trial: 2 or more, or remove strategy.")
    if pauses(spec.pruner.name):
        _check_pausing(spec, len(directions), source)
    if BACKENDS.supports(spec.backend, "optuna_pruners"):  # others map the pruner to their schedulers when they run
        check_pruner(spec.pruner, source=source)
        _check_per_example_pruner(spec, objective_cls, source)
    else:
        _check_every_report(spec, objective_cls, source)
    return Sweep(spec=spec, space=space, objective_cls=objective_cls, directions=directions, source=source)


def _check_distributed(spec: SweepSpec, source: str) -> None:
    """What a trial spread over several processes needs (objectives/engine/distributed.py), refused at load."""
    resources = spec.resources
    if not BACKENDS.supports(spec.backend, "distributed"):
        raise ConfigError(f"the {spec.backend} backend runs each trial in one process for now",
                          source=source, key="resources.devices_per_trial", value=resources.devices_per_trial,
                          hint=f"Fix: backend: {', '.join(BACKENDS.having('distributed'))}, or devices_per_trial: 1.")
    if spec.pruner.name in PRUNERS and PRUNERS.capabilities(spec.pruner.name).get("ray") == "pbt":
        raise ConfigError("PBT clones trials through Tune's checkpoints, and a trial over several devices keeps its "
                          "checkpoints in its Ray Train run", source=source, key="pruner.name", value=spec.pruner.name,
                          hint="Fix: another pruner (asha, median, hyperband), or devices_per_trial: 1 with pbt.")
    if spec.pack.slots > 1:
        raise ConfigError("a pack trains its slots in one process on one device; a trial over several devices is "
                          "one trial per process group", source=source, key="pack.slots", value=spec.pack.slots,
                          hint="Fix: pack.slots: 1 with devices_per_trial > 1, or devices_per_trial: 1 with a pack.")
    if resources.strategy == "fsdp" and spec.model.quantization is not None:
        raise ConfigError("FSDP shards the base model's weights, and a bitsandbytes-quantized base stores them "
                          "as packed integers that FSDP cannot shard with the rest", source=source,
                          key="resources.strategy", value="fsdp",
                          hint="Fix: strategy: ddp with a quantized base (each process holds it), or no quantization.")
    batch = spec.budget.batch_size
    if batch % resources.devices_per_trial:
        raise ConfigError(f"budget.batch_size {batch} does not split over {resources.devices_per_trial} processes: "
                          "each process trains batch_size / devices_per_trial rows of every step",
                          source=source, key="budget.batch_size", value=batch,
                          hint=f"Fix: a multiple of {resources.devices_per_trial}.")


def _check_pausing(spec: SweepSpec, n_objectives: int, source: str) -> None:
    """A scheduler that pauses and resumes trials (search/components/schedulers.py) needs what it runs on."""
    name = spec.pruner.name
    if not BACKENDS.supports(spec.backend, "optuna_pruners"):
        raise ConfigError(f"the {name} scheduler pauses trials in the study and resumes them from ftsweep's "
                          f"checkpoints, which the {spec.backend} backend does not run: its trials live in Ray Tune's "
                          "own scheduler", source=source, key="pruner.name", value=name,
                          hint="Fix: backend: optuna, or on Ray its own pausing scheduler, pruner: pbt (Tune's "
                          "PopulationBasedTraining pauses trials and resumes them from their checkpoints).")
    if spec.n_trials is None:
        raise ConfigError(f"the {name} scheduler decides between resuming a paused trial and starting a new one "
                          "within a number of trials", source=source, key="n_trials",
                          hint="Fix: set n_trials (timeout may stay, as a deadline).")
    if n_objectives > 1:
        raise ConfigError(f"the {name} scheduler ranks trials by one metric, and this sweep has {n_objectives}",
                          source=source, key="pruner.name", value=name,
                          hint="Fix: one metric (the others as constraints or recorded metrics), or pruner: none.")


def _check_per_example_pruner(spec: SweepSpec, objective_cls, source: str) -> None:
    """A pruner that compares trials row by row needs a metric scored row by row."""
    if not (spec.pruner.name in PRUNERS and PRUNERS.capabilities(spec.pruner.name).get("per_example")):
        return
    metric, per_row = spec.metrics[0].name, sorted(objective_cls.task_class.per_example_metrics)
    if metric not in per_row and not is_harness_metric(metric):  # lm-eval keeps each document's score too
        raise ConfigError(f"the {spec.pruner.name} pruner compares trials row by row, and {metric} is one number "
                          "per evaluation", source=source, key="metric.name", value=metric,
                          allowed=[*per_row, "lm_eval:TASK/METRIC"] if per_row else None,
                          hint="Fix: optimize one of these metrics, or another pruner (median, percentile, wilcoxon...).")


def _check_every_report(spec: SweepSpec, objective_cls, source: str) -> None:
    """A backend whose schedulers read the metric in every report (Ray) needs it at every evaluation."""
    metric = spec.metrics[0].name
    if is_harness_metric(metric):
        key, every = "evaluation.every", spec.evaluation.every  # 0: the final evaluation only
    elif metric in objective_cls.task_class.periodic_metrics:
        key, every = "objective.args.task_metrics_every", spec.objective.args.task_metrics_every
    else:
        return
    if every != 1:
        when = "the final evaluation only" if not every else f"one evaluation in {every} only"
        raise ConfigError(
            f"{metric} is computed at {when}, and the {spec.backend} backend's schedulers read the metric in every "
            "report", source=source, key=key, value=every,
            hint=f"Fix: {key.rpartition('.')[2]}: 1 (and budget.eval_every larger, to evaluate less often), or "
            f"backend: {', '.join(BACKENDS.having('optuna_pruners'))}.")


def _check_pack(spec: SweepSpec, space, objective_cls, source: str) -> None:
    """What packed trials need (objectives/engine/packed.py), refused at load with the reason."""
    def refuse(message: str, key: str, value: Any, hint: str) -> None:
        raise ConfigError(message, source=source, key=key, value=value, hint=hint)

    if not BACKENDS.supports(spec.backend, "packs"):
        refuse(f"the {spec.backend} backend runs one trial per process: it does not pack trials", "pack.slots",
               spec.pack.slots, f"Fix: backend: {', '.join(BACKENDS.having('packs'))}, or pack.slots: 1.")
    if objective_cls.task_class.name != "causal_lm":
        refuse("packed trials are causal_lm trials for now (a classifier's head cannot be shared)", "pack.slots",
               spec.pack.slots, "Fix: pack.slots: 1 for this objective.")
    wanted = [("metric", m.name) for m in spec.metrics] + [("record_metrics", n) for n in spec.record_metrics] + [
        ("constraints", c.metric) for c in spec.constraints]
    for key, name in wanted:
        if name not in PACK_METRICS:
            refuse(f"a packed trial reports {', '.join(PACK_METRICS)}, not {name}", key, name,
                   "Fix: use those metrics (e.g. metric: [eval_loss, trainable_params]), or pack.slots: 1.")
    if spec.evaluation is not None:
        refuse("lm-eval tasks run on one trial's model, and a pack's slots share one model", "evaluation",
               spec.evaluation.tasks, "Fix: remove evaluation:, or pack.slots: 1.")
    if spec.model.quantization is not None:
        refuse("packed slots wrap full-precision linear layers; a quantized base is not packed yet",
               "model.quantization", spec.model.quantization.model_dump(), "Fix: remove it, or pack.slots: 1.")
    budget = spec.budget
    for name in ("gradient_accumulation_steps", "packing", "padding_free", "gradient_checkpointing"):
        if getattr(budget, name) not in (1, False):
            refuse(f"packed trials take no budget.{name}", f"budget.{name}", getattr(budget, name),
                   f"Fix: remove budget.{name}, or pack.slots: 1.")
    for name, param in space.params().items():
        if name == "loraplus_lr_ratio":
            refuse("a pack trains its slots with one plain AdamW, and LoRA+ needs its own parameter groups",
                   f"space.params.{name}", getattr(param, "type", param), "Fix: remove it, or pack.slots: 1.")
        if name in PER_SLOT_PARAMS:
            continue
        values = finite_values(param)  # [] for a searched number
        if name == "peft_method" and len(values) == 1 and values != ["lora"]:
            refuse("packed slots are LoRA adapters", "space.params.peft_method", values[0],
                   "Fix: peft_method: {type: fixed, value: lora}, or pack.slots: 1.")
        if len(values) != 1 or (name == "peft_method" and values != ["lora"]):
            refuse(f"'{name}' is searched, and the trials of a pack must share it (slots may differ only in "
                   f"{', '.join(PER_SLOT_PARAMS)})", f"space.params.{name}", getattr(param, "type", param),
                   "Fix: fix it ({type: fixed, value: ...}), or pack.slots: 1.")


def _check_metrics(spec: SweepSpec, objective_cls, source: str) -> list[str]:
    """Every optimized, recorded and constrained metric is one the objective reports and can compute
    here; returns the optimized metrics' directions."""
    metrics = spec.metrics
    names = [m.name for m in metrics]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:
        raise ConfigError("a metric is listed twice", source=source, key="metric", value=repeated,
                          hint="Fix: list each optimized metric once.")
    many = len(metrics) > 1
    directions = []
    for i, m in enumerate(metrics):
        key = f"metric.{i}.name" if many else "metric.name"
        natural = objective_cls.check_metric(m.name, source=source, key=key, evaluation=spec.evaluation)
        directions.append(m.direction or natural)
    for i, name in enumerate(spec.record_metrics):
        objective_cls.check_metric(name, source=source, key=f"record_metrics.{i}", evaluation=spec.evaluation)
    for i, constraint in enumerate(spec.constraints):
        objective_cls.check_metric(constraint.metric, source=source, key=f"constraints.{i}.metric",
                                   evaluation=spec.evaluation)
    keys = {name: (f"metric.{i}.name" if many else "metric.name") for i, name in enumerate(names)}
    keys.update({name: f"record_metrics.{i}" for i, name in enumerate(spec.record_metrics) if name not in keys})
    keys.update({c.metric: f"constraints.{i}.metric" for i, c in enumerate(spec.constraints) if c.metric not in keys})
    for name, key in keys.items():
        objective_cls.check_metric_available(name, source=source, key=key, data=spec.dataset)
    return directions


def _multi_objective(spec: SweepSpec, source: str) -> SweepSpec:
    """A multi-objective sweep runs every trial to its end: refuse pruning asked for, drop the default."""
    pruner = spec.pruner.name
    if "pruner" in spec.model_fields_set and prunes(pruner):
        raise ConfigError(
            "a multi-objective sweep cannot prune: Optuna does not prune multi-objective trials "
            "(Trial.report and should_prune work for one objective only; a trial's intermediate "
            "values cannot rank it on a Pareto front)", source=source, key="pruner.name", value=pruner,
            hint="Fix: remove the pruner (every trial then trains its whole budget), or optimize one metric "
            "and turn the others into constraints or record_metrics.",
        )
    if not BACKENDS.supports(spec.backend, "multi_objective"):
        raise ConfigError(
            f"multi-objective sweeps run on the {' or '.join(BACKENDS.having('multi_objective'))} backend: the "
            f"{spec.backend} backend ranks trials by one metric", source=source, key="backend", value=spec.backend,
            hint="Fix: backend: optuna (several local workers: ftsweep launch --workers N).",
        )
    budget = spec.budget
    if "eval_every" not in budget.model_fields_set:
        budget = budget.model_copy(update={"eval_every": budget.max_steps})  # nothing to prune on: evaluate at the end
    return spec.model_copy(update={"pruner": ComponentSpec(name="none"), "budget": budget})


def _read_validated(path: Path, model: type[BaseModel], overrides: list[str] | None):
    """Safe-load a YAML mapping, apply `--set` overrides, validate it as `model` (ConfigError on any problem)."""
    source = str(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError("the file must be a mapping of keys to values", source=source, value=raw)
    raw = apply_overrides(raw, overrides or [])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(
            exc, source=source, prefix=None, allowed_keys=lambda loc: _fields_at(model, [str(p) for p in loc])
        ) from None


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str] | None:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return None
    return sorted(current.model_fields) if current is not None else None


def load_run(path: str | Path, overrides: list[str] | None = None) -> tuple[RunSpec, type]:
    """Read and validate a run spec (winner.yaml); returns it with its objective class.

    Example:
        >>> from search.results.export import export
        >>> [exported] = export(study, tmp / "winner")
        >>> run, objective_cls = load_run(exported.directory / "winner.yaml", ["budget.max_steps=200"])
        >>> run.budget.max_steps, objective_cls.name
        (200, 'causal_lm')
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError("run file not found", value=str(path))
    source = str(path)
    run = _read_validated(path, RunSpec, overrides)
    objective_cls = get_objective(run.objective.name)
    unknown = sorted(set(run.params) - set(objective_cls.accepted_params()))
    if unknown:
        raise ConfigError(f"objective '{objective_cls.name}' cannot apply param(s) {unknown}", source=source,
                          key=f"params.{unknown[0]}", allowed=sorted(objective_cls.accepted_params()))
    return run, objective_cls


def run_objective(run: RunSpec, objective_cls, *, source: str | None = None, output_dir: str | Path | None = None,
                  budget=None, metrics=()):
    """The objective of a run file (winner.yaml, a trained run's run.yaml), not set up: the one place a
    run's settings become an objective, as `Sweep.make_objective` is for a sweep's. `budget` replaces
    the run's (e.g. a common max_seq_length); `metrics` are those it should compute.

    Example:
        >>> from search.settings import RunSpec
        >>> run = RunSpec(name="r", objective="causal_lm", model="bundled:tiny-support-lm",
        ...               dataset="bundled:support-qa", params={"learning_rate": 0.01})
        >>> run_objective(run, get_objective("causal_lm")).task.input_columns()
        ['prompt']
    """
    return objective_cls(run.model, run.dataset, budget or run.budget, seed=run.seed, options=run.objective.args,
                         augmentation=run.augmentation, output_dir=output_dir, source=source, metrics=metrics,
                         evaluation=run.evaluation)


def sweep_from_study(study, storage_url: str) -> Sweep:
    """Rebuild the Sweep a study was launched with (recorded by `record_sweep`), on `storage_url`."""
    recorded = study.user_attrs.get("sweep")
    if not recorded:
        raise ConfigError("this study was not made by `ftsweep launch` (it records no sweep)", key="study",
                          value=study.study_name, hint="Fix: create it with `ftsweep launch SWEEP --workers 0`.")
    backend = recorded.get("backend", "optuna")
    if not BACKENDS.supports(backend, "workers"):
        raise ConfigError(f"workers join sweeps of backends that take them; the {backend} backend schedules its own "
                          "trials", key="study", value=study.study_name, allowed=BACKENDS.having("workers"))
    spec = SweepSpec.model_validate({**recorded, "storage": storage_url})
    return _resolve(spec, f"study '{study.study_name}'")
