"""The trial record: every key ftsweep keeps on a study trial, and the one code path that writes them.

The study is the source of truth: `best`, `show`, `report`, `export` and `train` read nothing else,
whichever backend ran the trials. Both backends write a trial through `TrialRecord` (the Optuna
backend on its live `optuna.Trial`, Ray's driver-side recorder on the storage), and every reader uses
the keys below, so the record cannot drift between backends.

What a trial holds besides Optuna's own params, intermediate values (the sweep metric at each
evaluation step) and state:

| user attribute | written when                | holds                                                        |
|----------------|-----------------------------|--------------------------------------------------------------|
| config         | the trial starts            | the full resolved params: searched, fixed and derived        |
| worker         | the trial starts            | host:pid of the process that owns the record                 |
| device         | the trial starts (optuna)   | where it trains, e.g. "cpu, float32"                         |
| placement      | its first result (ray)      | node id, GPU ids, CUDA_VISIBLE_DEVICES                       |
| eval_history   | every evaluation            | [{"step", every metric}, ...]                                |
| metrics        | it completes                | the final metrics                                            |
| duration_s     | it ends (any state)         | the trial's own wall time                                    |
| constraints    | it completes, if any        | {"peak_memory_mb <= 2048": violation (<= 0 is feasible)}     |
| fail_reason    | it fails                    | "TrialDiverged: ...", "preempted: ...", "interrupted: ..."   |
| failure_cause  | it fails                    | preempted, interrupted, oom, diverged, error                 |
| retry          | it fails                    | what the retry policy did (search/store/retries.py)          |
| retried        | it fails and is queued again| True: its re-run takes its place in n_trials                 |
| interrupted    | the user stopped it         | True: queued again when the sweep resumes                    |
| retry_of, retry_cause, attempt, overrides | a re-run is queued | the failed trial, why, which attempt, changed params |
| retry_reasons  | Ray restarted it            | the errors it was restarted after (`ray.max_failures`)      |
| slot           | a place is queued           | a WAITING trial holding one of the n_trials places           |
| enqueued       | `--enqueue` queued it       | True                                                         |
| paused_at      | a scheduler paused it       | the step of the checkpoint it keeps (search/store/pausing.py) |
| revision       | the trial starts            | the sweep revision it ran under (search/store/relaunch.py)   |

The study itself holds the sweep (`record_sweep`), the revisions a relaunch recorded, and its W&B sweep run: its
id, who writes it and a worker's claim to (`hand_sweep_run`, search/observers/tracking.py).
"""

from __future__ import annotations

import uuid
import warnings
import zlib
from collections.abc import Collection, Iterable
from typing import Any

import optuna
from optuna.trial import TrialState

from .relaunch import REVISION, check_relaunch, latest_revision
from .storage import open_storage, study_file_of

CONFIG = "config"
WORKER = "worker"
DEVICE = "device"
PLACEMENT = "placement"
EVAL_HISTORY = "eval_history"
METRICS = "metrics"
DURATION = "duration_s"
CONSTRAINTS = "constraints"
FAIL_REASON = "fail_reason"
FAILURE_CAUSE = "failure_cause"
RETRY = "retry"
RETRIED = "retried"
INTERRUPTED = "interrupted"
RETRY_OF = "retry_of"
RETRY_CAUSE = "retry_cause"
ATTEMPT = "attempt"
OVERRIDES = "overrides"
RETRY_REASON = "retry_reason"  # on a re-run of a trial lost by its heartbeat: why
RETRY_REASONS = "retry_reasons"
SLOT = "slot"
PACK = "pack"  # a packed trial's place: {slot, slots} (objectives/engine/packed.py)
ENQUEUED = "enqueued"
PAUSED_AT = "paused_at"  # a paused trial: PRUNED at this step, its checkpoint kept for its continuation
RAY_CHECKPOINT = "ray_checkpoint"  # a failed Ray trial queued to run again: the checkpoint its re-run goes on from

# REVISION (search/store/relaunch.py): the sweep revision a trial started under.

# Every trial attribute above: a backend writes no other (the backend contract tests check it).
TRIAL_KEYS = frozenset({CONFIG, WORKER, DEVICE, PLACEMENT, EVAL_HISTORY, METRICS, DURATION, CONSTRAINTS, FAIL_REASON,
                        FAILURE_CAUSE, RETRY, RETRIED, INTERRUPTED, RETRY_OF, RETRY_CAUSE, ATTEMPT, OVERRIDES,
                        RETRY_REASON, RETRY_REASONS, SLOT, ENQUEUED, PACK, PAUSED_AT, RAY_CHECKPOINT, REVISION})

# What `failure_cause` says (what each means for a re-run: search/store/retries.py).
PREEMPTED, INTERRUPTED_CAUSE, OOM, DIVERGED, ERROR = "preempted", "interrupted", "oom", "diverged", "error"
PAUSED = "paused"  # the retry_cause of a paused trial's continuation (search/store/pausing.py)

# Study user attributes.
STUDY_SWEEP = "sweep"  # the sweep settings, without the storage URL
STUDY_SPACE = "space"
STUDY_METRIC = "metric"  # "eval_loss", or "eval_loss, trainable_params" for several
STUDY_CONSTRAINTS = "constraints"  # ["peak_memory_mb <= 2048", ...]
STUDY_OBJECTIVE = "objective"
STUDY_BACKEND = "backend"
STUDY_ACCEPTED = "accepted_findings"  # data-check errors the launch accepted: [{check, message, split, count}]
STUDY_DEADLINE = "deadline"  # epoch seconds after which no trial starts (the sweep's timeout)
STUDY_WANDB_RUN = "wandb_sweep_run"  # the W&B id of the study's one sweep run, made once
STUDY_WANDB_RUN_BY = "wandb_sweep_run_by"  # who writes it: "launch" (the launching process) or "workers"
STUDY_WANDB_CLAIM = "wandb_sweep_run_claim"  # "host:pid@N": the worker writing it for the study's N trials
# STUDY_REVISIONS, STUDY_SPACE_REVISIONS (search/store/relaunch.py): what relaunches changed, and when.

# A trial's evaluation entry: the step, then every metric reported at it.
STEP = "step"


class TrialRecord:
    """Writes one study trial's record.

    Args:
        storage: the study's storage (`study._storage`).
        trial_id: the storage's id of the trial (`trial._trial_id`), not its number.
        study_id: the study's id in the storage (`study._study_id`): `started` reads the sweep revision there
            (a record made with `of` reads it through its trial).

    Example:
        >>> study = optuna.create_study()
        >>> trial = study.ask()
        >>> record = TrialRecord.of(trial)
        >>> record.started({"learning_rate": 0.01}, worker="host:1")
        >>> record.evaluated([{"step": 10, "eval_loss": 0.9}])
        >>> record.completed({"eval_loss": 0.9}, duration_s=1.5)
        >>> sorted(study._storage.get_trial(trial._trial_id).user_attrs)
        ['config', 'duration_s', 'eval_history', 'metrics', 'revision', 'worker']
    """

    def __init__(self, storage, trial_id: int, *, trial: optuna.Trial | None = None,
                 study_id: int | None = None) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.trial = trial
        self.study_id = study_id

    @classmethod
    def of(cls, trial: optuna.Trial) -> "TrialRecord":
        """The record of a live trial: written through it, so its own `user_attrs` (which the retry
        policy reads) see every write."""
        return cls(trial.storage, trial._trial_id, trial=trial)

    def set(self, key: str, value: Any) -> None:
        if self.trial is not None:
            self.trial.set_user_attr(key, value)
        else:
            self.storage.set_trial_user_attr(self.trial_id, key, value)

    def stamp(self, worker: str) -> None:
        """Who owns the record: a RUNNING trial whose owner is gone is failed and queued again."""
        self.set(WORKER, worker)

    def started(self, params: dict[str, Any], *, worker: str | None = None, device: str | None = None) -> None:
        if worker is not None:
            self.stamp(worker)
        if device is not None:
            self.set(DEVICE, device)
        self.set(CONFIG, dict(params))
        # Read at the start, from the study: a trial belongs to the sweep revision it was started under, even
        # when a relaunch records a newer one while it runs.
        if self.trial is not None:
            self.set(REVISION, latest_revision(self.trial.study.user_attrs))
        elif self.study_id is not None:
            self.set(REVISION, latest_revision(self.storage.get_study_user_attrs(self.study_id)))

    def placed(self, placement: dict[str, Any]) -> None:
        self.set(PLACEMENT, placement)

    def evaluated(self, history: list[dict[str, Any]]) -> None:
        """The whole evaluation history so far (each entry: step and metrics)."""
        self.set(EVAL_HISTORY, history)

    def completed(self, metrics: dict[str, float], *, duration_s: float | None) -> None:
        self.set(METRICS, metrics)
        if duration_s is not None:
            self.set(DURATION, duration_s)

    def ended(self, *, duration_s: float | None) -> None:
        """A trial that ends without metrics (pruned, failed)."""
        if duration_s is not None:
            self.set(DURATION, duration_s)

    def failed(self, cause: str, reason: str, *, retry: str | None = None, requeued: bool = False) -> None:
        """Why it failed; `requeued`: the retry policy queued it again (it no longer counts toward n_trials)."""
        self.set(FAIL_REASON, reason)
        self.set(FAILURE_CAUSE, cause)
        if retry is not None:
            self.set(RETRY, retry)
        if cause == INTERRUPTED_CAUSE:
            self.set(INTERRUPTED, True)
        if requeued:
            self.set(RETRIED, True)

    def restarted(self, reasons: list[str]) -> None:
        self.set(RETRY_REASONS, reasons)


def frozen_trial(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The storage's current record of a live trial (its state, attrs and values as every process sees them)."""
    return study._storage.get_trial(trial._trial_id)


def trial_by_number(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The study's trial `number`, read from the storage without loading every trial."""
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def storage_record(study: optuna.Study, trial: optuna.Trial) -> TrialRecord:
    """A record of `trial` written straight to the storage (a driver writing for trials run elsewhere, as Ray's)."""
    return TrialRecord(study._storage, trial._trial_id, study_id=study._study_id)


def record_constraints(trial: optuna.Trial, constraints: Iterable, metrics: dict[str, float]) -> None:
    """Give a finished trial its constraint values (Optuna's `set_constraint`: feasible when all <= 0),
    which samplers, `best_trial` and the Pareto front read; also kept readable as user attr
    `constraints` {"peak_memory_mb <= 2048": value}. `constraints` are `search.settings.ConstraintSpec`."""
    values = {}
    for constraint in constraints:
        values[constraint.describe()] = constraint.violation(metrics)
        trial.set_constraint(constraint.describe(), values[constraint.describe()])
    if values:
        trial.set_user_attr(CONSTRAINTS, values)


def record_sweep(study: optuna.Study, sweep) -> list[str]:
    """Store the sweep on its study at every launch, so every command (and `ftsweep worker`) can rebuild
    the objective from the store. Without secrets: the storage URL is not stored (it may hold a password).

    A relaunch is first checked against the sweep recorded (search/store/relaunch.py): a change that would make
    its trials incomparable raises a ConfigError before anything is written, unless `sweep.accept_changes`
    (`launch --accept-changes`) records it as a new sweep revision. Returns what the user should be told:
    the revision recorded, a changed search space.
    """
    notes = _check_relaunch(study, sweep, write=True)
    study.set_user_attr(STUDY_SWEEP, sweep.spec.model_dump(mode="json", exclude={"storage"}))
    study.set_user_attr(STUDY_SPACE, sweep.space.to_dict())
    study.set_user_attr(STUDY_METRIC, sweep.metric_label)
    with warnings.catch_warnings():  # experimental in name only: stable since Optuna 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(sweep.metric_names)  # Optuna's own: plots and the dashboard label axes with them
    study.set_user_attr(STUDY_CONSTRAINTS, [c.describe() for c in sweep.spec.constraints])
    study.set_user_attr(STUDY_OBJECTIVE, sweep.spec.objective.name)
    study.set_user_attr(STUDY_BACKEND, sweep.spec.backend)
    if sweep.accepted_findings is not None:
        study.set_user_attr(STUDY_ACCEPTED, sweep.accepted_findings)
    return notes


def hand_sweep_run(study: optuna.Study, by: str) -> None:
    """Say who writes the study's W&B sweep run at the end: "launch", the process that prepared the study and
    stays until its trials end (a launch in one process, or with local workers), or "workers" when it leaves
    them to it (`launch --workers 0`: the last worker out). Run by the one process that prepares the study.

    Example:
        >>> study = optuna.create_study()
        >>> hand_sweep_run(study, "workers")
        >>> study.user_attrs[STUDY_WANDB_RUN_BY], study.user_attrs[STUDY_WANDB_RUN].startswith("sweep-")
        ('workers', True)
    """
    if by not in ("launch", "workers"):
        raise ValueError(f"by must be 'launch' or 'workers', not {by!r}")
    sweep_run_id(study)  # made here, by one process: workers never race to make it
    study.set_user_attr(STUDY_WANDB_RUN_BY, by)


def sweep_run_id(study: optuna.Study) -> str:
    """The W&B run id of the study's sweep run, made on first use and kept on the study: every process that
    writes the sweep run, at any launch, resumes that one run.

    Example:
        >>> study = optuna.create_study()
        >>> sweep_run_id(study) == sweep_run_id(study) and sweep_run_id(study).startswith("sweep-")
        True
    """
    run_id = study.user_attrs.get(STUDY_WANDB_RUN)
    if run_id is None:
        run_id = f"sweep-{uuid.uuid4().hex[:12]}"
        study.set_user_attr(STUDY_WANDB_RUN, run_id)
    return run_id


def preview_relaunch(sweep) -> list[str]:
    """What launching `sweep` would tell of, or refuse about, the study it joins (`record_sweep`'s relaunch check),
    read without writing anything or creating a storage file: `launch --dry-run` refuses what the launch would.
    [] when the study does not exist yet."""
    file = study_file_of(sweep.storage_url)
    if file is not None and not file.exists():
        return []
    storage = open_storage(sweep.storage_url)
    if sweep.study_name not in optuna.study.get_all_study_names(storage=storage):
        return []
    return _check_relaunch(optuna.load_study(study_name=sweep.study_name, storage=storage), sweep, write=False)


def _check_relaunch(study: optuna.Study, sweep, *, write: bool) -> list[str]:
    return check_relaunch(study, recorded_sweep=study.user_attrs.get(STUDY_SWEEP),
                          launched_sweep=sweep.spec.model_dump(mode="json", exclude={"storage"}),
                          recorded_space=study.user_attrs.get(STUDY_SPACE), launched_space=sweep.space.to_dict(),
                          accept_changes=sweep.accept_changes, source=sweep.source, write=write)


# ------------------------------------------------------------------------------------- reading


def config_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The params a trial applied (searched, fixed and derived); Optuna's params for foreign trials."""
    return trial.user_attrs.get(CONFIG, trial.params)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """No recorded constraint is violated (a trial without constraints is feasible)."""
    return all(v <= 0 for v in trial.user_attrs.get(CONSTRAINTS, {}).values())


def counts_toward_budget(trial: optuna.trial.FrozenTrial, superseded: Collection[int] = ()) -> bool:
    """Finished trials count toward n_trials, except a failed one that runs again and a paused one (pruned by a
    pausing scheduler) with a continuation: the re-run or continuation counts instead. `superseded` are numbers of
    trials some `retry_of` points at (see `superseded_numbers`)."""
    if trial.state == TrialState.COMPLETE:
        return True
    if trial.state == TrialState.PRUNED:
        return not (PAUSED_AT in trial.user_attrs and trial.number in superseded)
    if trial.state != TrialState.FAIL:
        return False
    attrs = trial.user_attrs
    return not (attrs.get(INTERRUPTED) or attrs.get(RETRIED) or trial.number in superseded)


def superseded_numbers(trials) -> set[int]:
    """Numbers of the trials that were queued again (a trial failed by a heartbeat cannot be marked itself)."""
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}


def finished_count(trials) -> int:
    """How many of `trials` count toward n_trials."""
    superseded = superseded_numbers(trials)
    return sum(counts_toward_budget(t, superseded) for t in trials)


def sampler_seed(study: optuna.Study, seed: int, salt: str | None = None) -> int:
    """The seed of this process's sampler on `study`: the sweep's `seed` offset by the trials already started,
    so a resumed sweep does not replay the draws of its first launch (a seeded sampler starts its sequence
    again), and with `salt` (a worker's id) one of its own, so workers started together draw apart.

    Example:
        >>> study = optuna.create_study()
        >>> sampler_seed(study, 7)
        7
        >>> study.enqueue_trial({}); sampler_seed(study, 7)  # a queued trial has not started
        7
        >>> _ = study.ask(); sampler_seed(study, 7)
        8
    """
    started = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
    if salt is not None:
        return zlib.crc32(f"{seed}:{salt}".encode()) + started
    return seed + started


def state_counts(trials) -> dict[str, int]:
    """{state: count} for the states present, e.g. {'complete': 3, 'pruned': 1}: Optuna's states in lower case,
    and for pausing schedulers `paused` (a trial paused and not yet resumed or ended) and `resumed` (a paused trial
    whose continuation has started: that continuation is counted by its own state, the pair once)."""
    names = [trial_state(t, trials) for t in trials]
    return {name: names.count(name) for name in dict.fromkeys(
        [*(state.name.lower() for state in TrialState), "paused", "resumed"]) if name in names}


def trial_state(trial, trials) -> str:
    """`trial`'s state as `state_counts` counts it; '' for a paused trial's queued continuation (the paused
    trial stands for the pair)."""
    if trial.state == TrialState.WAITING and trial.user_attrs.get(RETRY_CAUSE) == PAUSED:
        return ""
    if trial.state == TrialState.PRUNED and PAUSED_AT in trial.user_attrs:
        continuation = next((t for t in trials if t.user_attrs.get(RETRY_OF) == trial.number), None)
        if continuation is not None:
            return "paused" if continuation.state == TrialState.WAITING else "resumed"
    return trial.state.name.lower()
