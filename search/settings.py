"""The settings of a sweep file and of a run file, as pydantic models: the bottom layer of `search`.

Nothing here imports the runtime (no torch, no Optuna, no W&B): every layer above can read a sweep's
settings without a cycle, and a setting has its default in exactly one place. `search.sweep` reads a
file into these models and resolves it; the sections `model:`, `dataset:`, `budget:`, `objective.args`
and `augmentation:` are the objective's own settings (`objectives.settings`).

Example:
    >>> SweepSpec(name="s", objective="causal_lm", model="bundled:tiny-support-lm",
    ...           dataset="bundled:support-qa", space="lora-quick").retries.max_retries
    2
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from objectives.settings import (
    AugmentationSettings,
    DataConfig,
    EvaluationSettings,
    ModelConfig,
    ObjectiveOptions,
    TrainBudget,
)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _named(value: Any) -> Any:
    # `sampler: tpe` is shorthand for `sampler: {name: tpe}`; same for pruner, objective, metric.
    return {"name": value} if isinstance(value, str) else value


class TrackingConfig(_Strict):
    """The `tracking:` section of a sweep file (search/observers/tracking.py mirrors trials to W&B)."""

    wandb: Literal["auto", "online", "offline", "off"] = Field(
        default="auto", description="auto: online with credentials and a reachable server, else offline."
    )
    # Unset (None): W&B's environment variable, else ftsweep's default. Set here, it wins over the environment.
    project: str | None = Field(default=None, description="Default: $WANDB_PROJECT, else ftsweep.")
    entity: str | None = Field(default=None, description="Default: $WANDB_ENTITY, else W&B's default entity.")
    group: str | None = Field(default=None, description="Default: $WANDB_RUN_GROUP, else the study name.")
    tags: list[str] | None = Field(default=None, description="Default: $WANDB_TAGS (comma-separated), else none.")
    dir: str | None = Field(default=None, description="Where W&B writes runs; default: $WANDB_DIR, else the "
                            "sweep's output_dir.")
    connect_timeout_s: float = Field(default=3.0, gt=0, description="How long `auto`/`online` wait for the server.")

    @field_validator("wandb", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false (and `on` as true): take them as the user meant them.
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class RetryPolicy(BaseModel):
    """The `retries:` section of a sweep file, on both backends (on Ray a trial lost with its worker process,
    raylet or node is `preempted`; `ray.max_failures` adds Ray's own restarts in place before this policy).

    Example:
        >>> RetryPolicy().max_retries, RetryPolicy().retry_errors
        (2, False)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(default=2, ge=0, description="Re-runs of a trial whose worker was killed or preempted.")
    retry_errors: bool = Field(
        default=False, description="Also re-run (up to max_retries) trials that raised any other exception.")
    halve_batch_on_oom: bool = Field(
        default=True, description="On out-of-memory, re-run with half the batch and twice the gradient accumulation.")
    heartbeat_interval: int = Field(
        default=10, gt=0,
        description="Seconds between heartbeats of a running trial (PostgreSQL/MySQL and journal storages).")
    grace_period: int = Field(
        default=60, gt=0,
        description="A running trial without a heartbeat for this long is failed (worker lost) and retried.")
    checkpoint_interval_s: float = Field(
        default=1.0, ge=0,
        description="A re-run resumes from its trial's last checkpoint, written at an evaluation once this many "
                    "seconds have passed since the previous one (0: at every evaluation). A trial shorter than "
                    "this has nothing worth saving: ~7 ms a checkpoint on the demo model (docs/benchmarks.md).")


class ComponentSpec(_Strict):
    """A sampler or pruner: a registry name plus keyword arguments for its Optuna class."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class ObjectiveSpec(_Strict):
    name: str = Field(description="A registered objective (causal_lm, sequence_classification) or your own as \"package.module:Class\".")
    args: ObjectiveOptions = Field(default_factory=ObjectiveOptions)


class MetricSpec(_Strict):
    name: str = "eval_loss"
    direction: Literal["minimize", "maximize"] | None = Field(
        default=None, description="Defaults to the metric's natural direction (loss: minimize, accuracy: maximize)."
    )


class ConstraintSpec(_Strict):
    """A bound a trial's final metric must keep to be *feasible* (Optuna's constrained optimization:
    samplers steer away from infeasible regions, `best` and the Pareto front skip infeasible trials).

    Example:
        >>> ConstraintSpec(metric="peak_memory_mb", max=2048).describe()
        'peak_memory_mb <= 2048'
    """

    metric: str
    max: float | None = Field(default=None, description="Feasible when metric <= max.")
    min: float | None = Field(default=None, description="Feasible when metric >= min.")

    @model_validator(mode="after")
    def _one_bound(self) -> "ConstraintSpec":
        if (self.max is None) == (self.min is None):
            raise ValueError("give exactly one of max or min")
        return self

    def describe(self) -> str:
        return f"{self.metric} <= {self.max:g}" if self.max is not None else f"{self.metric} >= {self.min:g}"

    @property
    def kind(self) -> str:
        """'max' or 'min': which side the bound is on."""
        return "max" if self.max is not None else "min"

    @property
    def limit(self) -> float:
        return self.max if self.max is not None else self.min

    def violation(self, metrics: dict[str, float]) -> float:
        """Optuna's constraint value: <= 0 when satisfied, how far off otherwise (inf when not measured)."""
        value = metrics.get(self.metric)
        if value is None or value != value or value in (float("inf"), float("-inf")):
            return float("inf")
        return value - self.max if self.max is not None else self.min - value

    def satisfied(self, metrics: dict[str, float]) -> bool:
        """Whether `metrics` keep to the bound (a metric not measured, or not finite, does not).

        Example:
            >>> bound = ConstraintSpec(metric="latency_ms", max=20)
            >>> bound.satisfied({"latency_ms": 12.5}), bound.satisfied({}), bound.kind, bound.limit
            (True, False, 'max', 20.0)
        """
        return self.violation(metrics) <= 0


class RayConfig(_Strict):
    """The `ray:` section: used by `backend: ray` only."""

    address: str | None = Field(default=None, description="An existing cluster (else RAY_ADDRESS, else a local Ray).")
    num_cpus: int | None = Field(default=None, gt=0, description="CPUs of a local Ray (default: all).")
    num_gpus: float | None = Field(default=None, ge=0, description="GPUs of a local Ray (default: detected).")
    cpus_per_trial: float = Field(default=1, gt=0, description="A trial over several devices: the whole trial's, "
                                  "split over its Ray Train workers.")
    gpus_per_trial: float = Field(default=0, ge=0, description="0.5 puts two trials on each GPU; a trial over "
                                  "several devices takes devices_per_trial (one GPU a worker).")
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    max_failures: int = Field(default=0, ge=0, description="Ray's own restarts of a trial that failed, whatever the "
                              "cause, before the `retries:` policy decides (from its last checkpoint; rarely needed).")
    checkpoints_to_keep: int | None = Field(
        default=None, gt=0, description="Adapter checkpoints kept per trial (default 1; 4 under PBT)."
    )


class PackSettings(_Strict):
    """Packed trials: K LoRA trials trained at once on one copy of the base model (objectives/engine/packed.py).

    Example:
        >>> PackSettings(slots=4).slots
        4
    """

    slots: int = Field(default=1, ge=1, description="Trials trained together per worker (1: one at a time). Slots "
                       "may differ in learning rate, schedule, warmup, weight decay, max_grad_norm and LoRA r, alpha, "
                       "dropout; every other param must be fixed.")


class ResourceSettings(_Strict):
    """How much of a machine one trial takes (objectives/engine/distributed.py).

    Example:
        >>> ResourceSettings(devices_per_trial=4).strategy
        'ddp'
    """

    devices_per_trial: int = Field(default=1, ge=1, description="Processes one trial runs in: one per GPU (a worker "
                                   "with --gpus 0,1,2,3 and 2 here runs 2 trials of 2 GPUs), or CPU processes "
                                   "(gloo); 1: the trial in the worker's own process.")
    strategy: Literal["ddp", "fsdp"] = Field(default="ddp", description="How the processes share the trial: ddp "
                                             "(data parallel, each process a copy of the model) or fsdp (the model "
                                             "sharded over them: FSDP2 with PEFT's auto-wrap policy).")
    timeout_s: float = Field(default=600.0, gt=0, description="A collective that waits this long fails the trial "
                             "(a rank died or hung); the retry policy then re-runs it like a preempted trial.")
    deadlock_after_s: float = Field(default=60.0, gt=0, description="Every rank waiting in a collective, using no "
                                    "CPU, for this long fails the trial at once (they wait on each other: a "
                                    "deadlock), retried as timeout_s is. CPU ranks (gloo); on GPUs timeout_s applies.")


class SweepSpec(_Strict):
    """A validated sweep file. Defaults live here and nowhere else.

    Example:
        >>> spec = SweepSpec(name="s", objective="causal_lm", model="bundled:tiny-support-lm",
        ...                  dataset="bundled:support-qa", space="lora-quick")
        >>> spec.sampler.name, spec.pruner.name, spec.n_trials
        ('tpe', 'median', 20)
    """

    name: str = Field(description="Names the study and the default output directory.")
    description: str = ""
    objective: ObjectiveSpec
    model: ModelConfig
    dataset: DataConfig
    space: str | dict[str, Any] = Field(description="A preset name, {preset, override, add, remove} or {params}.")
    metric: MetricSpec | list[MetricSpec] = Field(
        default_factory=MetricSpec, description="What trials optimize; a list of several makes a multi-objective sweep."
    )
    record_metrics: list[str] = Field(
        default_factory=list, description="More metrics to compute and store per trial (e.g. bleu, latency_ms)."
    )
    constraints: list[ConstraintSpec] = Field(
        default_factory=list, description="Bounds on final metrics, e.g. {metric: peak_memory_mb, max: 4096}."
    )
    sampler: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="tpe"))
    pruner: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="median"))
    n_trials: int | None = Field(default=20, gt=0, description="Finished trials the study should hold.")
    timeout: float | None = Field(default=None, gt=0, description="Seconds after which no new trial starts.")
    budget: TrainBudget = Field(default_factory=TrainBudget)
    augmentation: AugmentationSettings | None = Field(
        default=None, description="Fixed augmentation settings (synonym table, translation models); the space's "
        "aug_* params decide per trial how much.",
    )
    evaluation: EvaluationSettings | None = Field(
        default=None, description="lm-evaluation-harness tasks run on each trial's model; their metrics are "
        "lm_eval:TASK/METRIC (objectives/evaluation/harness.py).",
    )
    seed: int = 0
    backend: str = "optuna"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    pack: PackSettings = Field(default_factory=PackSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    storage: str | None = Field(default=None, description="Optuna storage URL; default the journal file <output_dir>/<study>.journal.")
    study_name: str | None = None
    output_dir: str | None = Field(default=None, description="Default: runs/<name>.")

    _normalize = field_validator("objective", "metric", "sampler", "pruner", mode="before")(_named)

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one metric")
            return [_named(item) for item in value]
        return value

    @property
    def metrics(self) -> list[MetricSpec]:
        """The optimized metrics, in order (one for a single-objective sweep)."""
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        return {"name_or_path": value} if isinstance(value, str) else value

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @field_validator("name", "study_name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        # Names become file names and study keys: no path separators, no surprises.
        if value is not None and not _SAFE_NAME.match(value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (no path separators or spaces)")
        return value

    @model_validator(mode="after")
    def _something_stops_the_sweep(self) -> "SweepSpec":
        if self.n_trials is None and self.timeout is None:
            raise ValueError("set n_trials or timeout (or both): otherwise the sweep never ends")
        return self


class RunSpec(_Strict):
    """A sweep-free, reproducible run: what `ftsweep export` writes as winner.yaml and `ftsweep train` reads.

    Example:
        >>> run = RunSpec(name="demo-trial-8", objective="causal_lm", model="bundled:tiny-support-lm",
        ...               dataset="bundled:support-qa", params={"learning_rate": 0.026})
        >>> run.budget.max_steps
        60
    """

    name: str
    objective: ObjectiveSpec
    model: ModelConfig
    dataset: DataConfig
    params: dict[str, Any] = Field(description="Every applied hyperparameter: searched, fixed and derived.")
    budget: TrainBudget = Field(default_factory=TrainBudget)
    seed: int = 0
    merge_validation: bool = Field(
        default=False, description="Train on train+validation (the test split stays held out)."
    )
    augmentation: AugmentationSettings | None = Field(
        default=None, description="The sweep's augmentation settings, for the params' aug_* values.",
    )
    evaluation: EvaluationSettings | None = Field(
        default=None, description="The sweep's lm-evaluation-harness tasks, run on the final model too.",
    )
    output_dir: str | None = Field(default=None, description="Default: runs/<name>.")
    provenance: dict[str, Any] = Field(default_factory=dict, description="Where the values came from; not used to train.")

    _normalize = field_validator("objective", mode="before")(_named)
    _model_shorthand = field_validator("model", mode="before")(SweepSpec._model_shorthand.__func__)
    _dataset_shorthand = field_validator("dataset", mode="before")(SweepSpec._dataset_shorthand.__func__)
    _safe_name = field_validator("name")(SweepSpec._safe_name.__func__)


