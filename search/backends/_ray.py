"""The Ray Tune backend: the same sweep file, spaces and objectives, trials spread over a Ray cluster.

- Search: Ray's `OptunaSearch` driven by the sweep's own Optuna sampler and define-by-run space, so
  TPE, conditional and derived params behave as under the Optuna backend. Its study lives in the
  sweep's storage: every Ray trial is an Optuna trial there (params, intermediate values, state,
  user attributes), so `status`/`best`/`export` need no Ray-specific code.
- Early stopping: the sweep's pruner is mapped to a Ray scheduler (ray_schedulers.py: ASHA, ASHA with
  brackets, median stopping; none of them pauses a trial); a trial a scheduler stops is recorded
  PRUNED. `pruner: {name: pbt}` is Ray-only.
- Tracking: the driver's `StudyRecorder` mirrors every trial to its own W&B run, as the Optuna backend
  does (observers/tracking.py), from what the trials report.
- Workers: the objective is set up once per worker process and reused across trials (actor reuse).

ray is optional (`pip install 'ftsweep[ray]'`) and imported only here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from objectives.engine.checkpoint import checkpoint_state
from spaces import ConfigError

from ..components import PRUNERS, build_sampler
from ..observers.tracking import SweepTracker, TrialTracker, make_tracker
from ..secrets import scrub_secrets
from ..settings import RetryPolicy
from ..store.record import (EVAL_HISTORY, ERROR, OOM, OVERRIDES, PREEMPTED, RAY_CHECKPOINT, RETRY_OF, RETRY_REASONS,
                             STEP, TrialRecord, finished_count, frozen_trial, hand_sweep_run, record_sweep,
                             sampler_seed, state_counts, storage_record, trial_by_number)
from ..store.recovery import mark_trial_interrupted
from ..store.retries import enqueue_retry, failure_cause, plan_retry
from ..store.storage import WORKER_ID, prepare_storage
from ..trials import decide, failed, settle
from ..sweep import Sweep
from ._base import Backend, SweepOutcome
from .ray_cluster import check_shared_results, join_ray
from .ray_schedulers import PBT_MUTABLE, ray_scheduler, ray_scheduler_args
from .ray_train import (DONE_KEY, RESUME_FROM, TRAIN_LOGS, TRAIN_RUNS, distributed_trainable, local_copy,
                        newest_run_checkpoint, placement_here, release_workers, run_and_report, train_settings)

INSTALL_HINT = "pip install 'ftsweep[ray]'"
DRIVER_CPUS = 0.01  # a distributed trial's Tune actor only drives its Ray Train run (ray_train.py)


def _import_ray():
    # ftsweep draws its own progress: Ray's console reporter, its "experiment state snapshot" warning
    # (forced by num_to_keep, which bounds disk on purpose) and INFO chatter would only bury it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("backend 'ray' needs Ray Tune", key="backend", value="ray",
                          hint=f"Fix: {INSTALL_HINT}") from None
    return ray, tune


# ------------------------------------------------------------------------------------ worker side

_WORKER_OBJECTIVES: dict[str, Any] = {}
STUDY_TRIAL = "ftsweep_trial"  # PBT only: the study trial number a Ray trial started as (not a param)
NOT_PARAMS = (STUDY_TRIAL, RESUME_FROM)  # RESUME_FROM: a re-run's checkpoint (ray_train.py)
ABSENT = "<ftsweep: not in this trial>"  # PBT only: a conditional param this trial does not have


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The params a Ray trial's config trains with: without ftsweep's own keys and PBT's absent params."""
    return {k: v for k, v in config.items() if k not in NOT_PARAMS and v != ABSENT}


def _worker_objective(payload: str):
    """The objective for this sweep in this worker process, set up on first use only."""
    objective = _WORKER_OBJECTIVES.get(payload)
    if objective is None:
        sweep = Sweep.from_payload(payload)
        objective = sweep.make_objective()
        objective.setup()
        _WORKER_OBJECTIVES.clear()  # one sweep per worker at a time: free the previous base model
        _WORKER_OBJECTIVES[payload] = objective
    return objective


def trainable(config: dict[str, Any], payload: str) -> None:
    """One Ray trial: a short fine-tune with `config`, every evaluation sent to `tune.report` with the
    trial's checkpoint (adapter, optimizer, schedule, RNG states, data position: never the base model).
    A trial Ray restarts -- a retry after a failure, a paused trial resumed, PBT cloning another trial
    -- continues from its checkpoint exactly as if it had not stopped (objectives/engine/checkpoint.py)."""
    from ray import tune

    objective = _worker_objective(payload)
    started = time.monotonic()  # after set-up, as the Optuna backend times a trial
    params = trial_params(config)
    # Where this trial ran, so the study shows placement. JSON text: Tune flattens nested dicts in results.
    placement = json.dumps(placement_here())
    trial_id = tune.get_context().get_trial_id()
    # Ray's own restart of this trial, else the checkpoint of the failed trial this one re-runs (retries: policy).
    previous = tune.get_checkpoint() or (tune.Checkpoint(config[RESUME_FROM]) if config.get(RESUME_FROM) else None)
    resume_dir = None
    resumed_from, cloned_from, trained_before = 0, None, 0.0
    if previous is not None:
        resume_dir = local_copy(previous)
        state = checkpoint_state(resume_dir)
        resumed_from, trained_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        if state.get("ray_trial_id") not in (None, trial_id):
            cloned_from = state["ray_trial_id"]  # PBT gave this trial another trial's checkpoint
        # The weights decide the adapter's shape: take the checkpoint's params, and from the config only
        # what PBT may change. (Ray's PBT can pair a clone's config with an older checkpoint.)
        params = {**state.get("params", params), **{k: v for k, v in params.items() if k in PBT_MUTABLE}}
    common = {"placement": placement, "resumed_from": resumed_from, "params": json.dumps(params),
              **({"cloned_from": cloned_from} if cloned_from else {})}

    def send(result: dict[str, Any], saved: str | None) -> None:
        # Ray copies the checkpoint into the experiment folder (its storage) and drops the oldest ones; a
        # scheduler's stop is a SystemExit inside tune.report.
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(saved) if saved else None)

    run_and_report(objective, params, send, common=common, trial_id=trial_id, resume_dir=resume_dir,
                   started=started, trained_before=trained_before)


# ------------------------------------------------------------------------------------ driver side


try:  # Ray is optional: without it this module still imports, and RayBackend says how to install it.
    from ray.tune import Callback as _Callback
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch as _OptunaSearch
except ImportError:  # pragma: no cover - exercised only without the extra
    _OptunaSearch = _Callback = Searcher = object


class DefineByRun:
    """The sweep's space as a picklable define-by-run function (Ray checkpoints its searcher)."""

    def __init__(self, payload: str) -> None:
        self.payload = payload
        self._space = None

    def __call__(self, trial):
        if self._space is None:
            self._space = Sweep.from_payload(self.payload).space
        params = self._space.sample(trial)
        searched = set(self._space.searched_names)
        return {k: v for k, v in params.items() if k not in searched}  # fixed and derived, as constants

    def __getstate__(self):
        return {"payload": self.payload, "_space": None}


class StudyRecorder:
    """Writes Ray trials into the sweep's study: config, placement, eval history and intermediate
    values, final metrics and state (a trial a scheduler stopped early is PRUNED), failure reasons.
    Tells the progress listener as trials report and end. Driver side; fed by `StudyCallback`."""

    def __init__(self, study: optuna.Study, *, metric_name: str, metric_keys: set[str], max_steps: int,
                 listener=None, constraints=(), tracker: SweepTracker | None = None,
                 retries: RetryPolicy | None = None, budget=None, n_trials: int | None = None) -> None:
        self.study = study
        # The sweep's `retries:` policy, as on the Optuna backend: a failed trial's re-run is queued in the study
        # (StudySearch takes it next). None under PBT, whose population is fixed (Ray's max_failures only).
        self.retries, self.budget = retries, budget
        self.n_trials = n_trials  # what StudySearch searches for (None: until the timeout)
        self.tracker = tracker or SweepTracker()  # W&B: one run per trial, as under the Optuna backend
        self.tracked: dict[str, TrialTracker] = {}
        self.constraints = list(constraints)  # ConstraintSpec: feasibility of each completed trial
        self.metric_name = metric_name
        self.metric_keys = metric_keys | {metric_name}  # what of a Ray result is the trial's own metrics
        self.max_steps = max_steps
        self.listener = listener
        self.trials: dict[str, optuna.Trial] = {}
        self.population: dict[int, optuna.Trial] = {}  # PBT: study trials asked up front, by number
        self.histories: dict[str, list[dict]] = {}
        self.configs: dict[str, dict] = {}  # params each trial trains with now
        self.finished: set[str] = set()

    def __getstate__(self):  # Ray pickles its searcher and callbacks into experiment checkpoints
        return {**self.__dict__, "listener": None, "tracker": SweepTracker(), "tracked": {}}

    def _tell(self, event: str, details: dict) -> None:
        if self.listener is not None:
            self.listener(event, details)

    def attach(self, trial_id: str, ot_trial: optuna.Trial, config: dict) -> None:
        self.trials[trial_id] = ot_trial
        self.configs[trial_id] = trial_params(config)
        # The driver owns the record: a dead driver's trial is stale.
        record = self._record(trial_id)
        record.started(self.configs[trial_id], worker=WORKER_ID)
        self.tracked[trial_id] = self.tracker.trial(self.study.study_name, ot_trial.number, self.configs[trial_id])
        if config.get(RESUME_FROM):  # a re-run goes on from the failed trial's curve, as on the Optuna backend
            step = int(checkpoint_state(config[RESUME_FROM])["step"])
            previous = trial_by_number(self.study, int(ot_trial.user_attrs[RETRY_OF]))
            history = [dict(h, resumed_from=step) if h[STEP] == step else dict(h)
                       for h in previous.user_attrs.get(EVAL_HISTORY, []) if h[STEP] <= step]
            self.histories[trial_id] = history
            record.evaluated(history)
            for entry in history:
                if self.metric_name in entry:
                    ot_trial.report(float(entry[self.metric_name]), entry[STEP])

    def resume_point(self, ot_trial: optuna.Trial, config: dict) -> str | None:
        """The checkpoint a re-run of a failed trial goes on from: the failed trial's last one, when it trained
        the same params (an OOM re-run changes the batch: it starts over)."""
        retry_of = ot_trial.user_attrs.get(RETRY_OF)
        if retry_of is None:
            return None
        # From the study, so a relaunch after the driver died resumes the re-runs it queued too.
        saved = trial_by_number(self.study, int(retry_of)).user_attrs.get(RAY_CHECKPOINT)
        if saved is None or not Path(saved).is_dir():
            return None
        try:
            same = checkpoint_state(saved).get("params") == trial_params(config)
        except Exception:  # an unreadable checkpoint: the re-run starts over
            return None
        return saved if same else None

    def owed(self) -> tuple[int | None, int]:
        """(trials still to start for n_trials, trials running), from one read of the study; (None, 0) without
        n_trials. Running trials count toward n_trials; a failed trial queued to run again stops counting, so
        its re-run is owed."""
        if self.n_trials is None:
            return None, 0
        trials = self.study.get_trials(deepcopy=False)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return self.n_trials - finished_count(trials) - running, running

    def _live(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        """The study's record of a Ray trial while it can still be written. After a relaunch Ray may
        report on trials the study already finished; those are left alone."""
        if trial_id in self.finished or trial_id not in self.trials:
            return None
        frozen = frozen_trial(self.study, self.trials[trial_id])
        if frozen.state != TrialState.RUNNING:
            self.finished.add(trial_id)
            return None
        return frozen

    def _record(self, trial_id: str) -> TrialRecord:
        return storage_record(self.study, self.trials[trial_id])

    def result(self, trial_id: str, result: dict) -> None:
        if self.metric_name not in result or result.get(DONE_KEY):
            return
        frozen = self._live(trial_id)
        if frozen is None:
            return
        ot_trial = self.trials[trial_id]
        step = int(result.get("step", result.get("training_iteration", 0)))
        history = self.histories.setdefault(trial_id, [])
        record = self._record(trial_id)
        if not history and "placement" in result:
            record.placed(json.loads(result["placement"]))
        resumed = int(result.get("resumed_from", 0))
        restarted = bool(history) and (step <= history[-1]["step"] or resumed != history[-1].get("resumed_from", 0))
        if restarted:
            # Restarted from a checkpoint (a retry, or PBT cloning a trial): its curve goes on from there.
            history[:] = [h for h in history if h["step"] <= resumed and h["step"] < step]
        entry = {"step": step, **{k: v for k, v in result.items() if k in self.metric_keys}}
        if resumed:
            entry["resumed_from"] = resumed
        if restarted and result.get("cloned_from") in self.trials:  # PBT: now training a copy of that trial
            entry["cloned_from"] = self.trials[result["cloned_from"]].number
        params = json.loads(result["params"]) if "params" in result else {}
        if params and params != self.configs[trial_id]:  # PBT changed params (cloned, then explored)
            self.configs[trial_id] = entry["config"] = params
            record.started(params)  # the params it finished with
        history.append(entry)
        record.evaluated(history)
        if step not in frozen.intermediate_values:
            ot_trial.report(float(result[self.metric_name]), step)
        metrics = {k: v for k, v in result.items() if k in self.metric_keys}
        self._track(trial_id, result, metrics, step)
        self._tell("trial_report", {"trial": ot_trial, "step": step, "metrics": metrics})

    def _track(self, trial_id: str, result: dict, metrics: dict[str, float] | None, step: int) -> None:
        """Mirror a result to the trial's W&B run: the training logs since the last one, then the
        evaluation (the Optuna backend logs the same, in the same order)."""
        tracked = self.tracked.get(trial_id)
        if tracked is None:
            return
        for log_step, logs in json.loads(result.get(TRAIN_LOGS) or "[]"):
            tracked.log(int(log_step), logs)
        if metrics:
            tracked.log(step, metrics)

    def retried(self, trial_id: str, reason: str) -> None:
        frozen = self._live(trial_id)
        if frozen is not None:
            self._record(trial_id).restarted(frozen.user_attrs.get(RETRY_REASONS, []) + [scrub_secrets(reason)])

    def complete(self, trial_id: str, result: dict | None, *, error: str | None = None, cause: str = ERROR,
                 checkpoint: str | None = None) -> None:
        """Record how a Ray trial ended; a failure is re-run per the retry policy, from `checkpoint` (its last)."""
        if self._live(trial_id) is None:
            return
        ot_trial = self.trials[trial_id]
        record = self._record(trial_id)
        result = result or {}
        value = result.get(self.metric_name)
        if result.get("placement"):
            record.placed(json.loads(result["placement"]))
        # A trial stopped at its last step by a scheduler (ASHA stops at max_t) did run its budget.
        step = int(result.get("step", 0))
        ran_budget = bool(result.get(DONE_KEY)) or step >= self.max_steps
        metrics = {k: v for k, v in result.items() if k in self.metric_keys}
        last_eval = {k: v for k, v in (self.histories.get(trial_id) or [{}])[-1].items()
                     if k in self.metric_keys}
        # The trial's own training time, all its runs together (the last result's, from the worker).
        duration = result.get("duration_s", result.get("elapsed_s"))
        tracked = self.tracked.pop(trial_id, TrialTracker())
        if result.get(DONE_KEY):
            self._track(trial_id, result, None, step)  # the training logs since the last evaluation
        if error is not None:
            ending = failed(cause, error, last_eval)
        elif ran_budget and value is not None:
            ending = decide([self.metric_name], metrics)  # a NaN or infinite final value: failed, diverged
        else:  # a scheduler stopped it before its budget ran out
            ending = decide([self.metric_name], last_eval, stopped=True)
        settle(ending, record, tracked, duration_s=duration, trial=ot_trial, constraints=self.constraints,
               retry=None if self.retries is None else lambda cause: self._retry(ot_trial, cause, checkpoint))
        try:
            frozen = self.study.tell(ot_trial, ending.values[0] if ending.values else None,
                                     state=ending.optuna_state)
        except Exception as exc:  # never let bookkeeping end a sweep
            optuna.logging.get_logger("ftsweep").warning("could not record Ray trial %s: %s", trial_id, exc)
            return
        finally:
            self.finished.add(trial_id)
        self._tell("trial_end", {"study": self.study, "trial": frozen})

    def _retry(self, ot_trial: optuna.Trial, cause: str, checkpoint: str | None) -> tuple[str, bool]:
        """`settle`'s question, answered by the sweep's retry policy: (what happens, whether a re-run was queued)."""
        plan, outcome = plan_retry(ot_trial, cause, self.retries, self.budget)
        if plan is not None:
            if checkpoint is not None:
                ot_trial.set_user_attr(RAY_CHECKPOINT, checkpoint)
            enqueue_retry(self.study, ot_trial, plan)
        return outcome, plan is not None


class StudySearch(_OptunaSearch):
    """Ray's OptunaSearch on the sweep's own study and sampler. It only suggests: each trial it asks
    the study for is attached to the `StudyRecorder`, which records everything after that."""

    def __init__(self, *args, recorder: StudyRecorder, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        self.idle_until = 0.0

    def suggest(self, trial_id: str):
        if time.monotonic() < self.idle_until:  # Tune asks at every step of its loop: read the study once a second
            return None
        owed, running = self.recorder.owed()
        if owed is not None and owed <= 0 and trial_id not in self._ot_trials:
            # Nothing to start now; a running trial that fails may still queue a re-run, so the search
            # ends only when none runs.
            if running:
                self.idle_until = time.monotonic() + 1.0
                return None
            return Searcher.FINISHED
        config = super().suggest(trial_id)  # the study's queued trials (re-runs, --enqueue) come first
        if isinstance(config, dict):
            ot_trial = self._ot_trials[trial_id]
            config.update(ot_trial.user_attrs.get(OVERRIDES, {}))  # a re-run's changes, e.g. the halved batch
            resume = self.recorder.resume_point(ot_trial, config)
            if resume is not None:
                config[RESUME_FROM] = resume
            self.recorder.attach(trial_id, ot_trial, config)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # StudyCallback records results, including those of trials a scheduler stops

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._ot_trials.pop(trial_id, None)  # StudyCallback tells the study


class StudyCallback(_Callback):
    """Feeds Ray's trial events to the `StudyRecorder`. With PBT (no searcher), trials are attached
    here, by the study trial number their first config carries."""

    def __init__(self, recorder: StudyRecorder, train_runs: Path | None = None) -> None:
        self.recorder = recorder
        self.train_runs = train_runs  # distributed trials: where their Train runs keep checkpoints

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.recorder.trials and STUDY_TRIAL in trial.config:
            ot_trial = self.recorder.population.pop(trial.config[STUDY_TRIAL])
            self.recorder.attach(trial.trial_id, ot_trial, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recorder.result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        release_workers(trial.last_result)  # a distributed trial's (ray_train.py)
        self.recorder.complete(trial.trial_id, trial.last_result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recorder.retried(trial.trial_id, _error_text(_trial_error(trial)))

    def on_trial_error(self, iteration, trials, trial, **info):
        release_workers(trial.last_result)
        error = _trial_error(trial)
        saved = trial.checkpoint  # the newest checkpoint Tune persisted for it (None before the first)
        if saved is not None:
            saved = saved.path
        elif self.train_runs is not None:  # a distributed trial's are its Train run's
            saved = newest_run_checkpoint(self.train_runs, trial.trial_id)
        self.recorder.complete(trial.trial_id, trial.last_result, error=_error_text(error),
                               cause=ray_failure_cause(error) if error is not None else ERROR, checkpoint=saved)


def ray_failure_cause(error: BaseException) -> str:
    """The cause (search/store/retries.py) of a Ray trial's error. Ray's own ways of losing a trial -- its worker
    process, raylet or node died, was killed or cut off -- are `preempted`, re-run under `retries.max_retries` as
    a killed worker's trial is on the Optuna backend; Ray's memory monitor killing it is `oom`."""
    from ray import exceptions

    if isinstance(error, exceptions.OutOfMemoryError):
        return OOM
    if isinstance(error, (exceptions.RayActorError, exceptions.NodeDiedError, exceptions.WorkerCrashedError,
                          exceptions.LocalRayletDiedError, exceptions.OwnerDiedError)):
        return PREEMPTED
    return failure_cause(error)


def _local_cluster(ray_options) -> dict[str, float]:
    """The CPUs and GPUs of the local Ray a launch starts: `ray.num_cpus` / `ray.num_gpus`, else what Ray
    itself detects (every CPU, every visible CUDA device)."""
    import torch

    cpus = ray_options.num_cpus or os.cpu_count() or 1
    gpus = ray_options.num_gpus if ray_options.num_gpus is not None else (
        torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return {"CPU": float(cpus), "GPU": float(gpus)}


def _trials_that_fit(cluster: dict[str, float], ray_options, *, distributed: bool, source: str) -> int:
    """How many trials the cluster holds at once, by what one trial takes (a distributed one: its workers and
    its driver); ConfigError when not even one fits (Ray would wait for the resources forever)."""
    cpus = ray_options.cpus_per_trial + (DRIVER_CPUS if distributed else 0.0)
    fits = {"CPU": (cluster.get("CPU", 0.0), cpus)}
    if ray_options.gpus_per_trial > 0:
        fits["GPU"] = (cluster.get("GPU", 0.0), ray_options.gpus_per_trial)
    counts = {kind: int(have / need + 1e-9) for kind, (have, need) in fits.items()}
    short = [kind for kind, count in counts.items() if count == 0]
    if short:
        kind = short[0]
        have, need = fits[kind]
        key = "ray.cpus_per_trial" if kind == "CPU" else "ray.gpus_per_trial"
        taken = f"{need:g} {kind}" + (f" ({ray_options.cpus_per_trial:g} for its Ray Train workers, {DRIVER_CPUS:g} for "
                                      "its Tune driver)" if kind == "CPU" and distributed else "")
        raise ConfigError(f"one trial takes {taken} and the Ray cluster has {have:g}",
                          source=source, key=key, value=getattr(ray_options, key.split(".")[1]),
                          hint=f"Fix: a smaller {key}" + (" (it is the whole trial's, split over its workers)"
                                                         if distributed else "") + ", or a bigger cluster.")
    return min(counts.values())


def _trial_error(trial) -> BaseException | None:
    """The exception a Ray trial raised, unpickled from beside the driver's copy of the trial (None when
    it cannot be read here)."""
    import cloudpickle

    try:  # Ray pickles the error next to the driver's copy of the trial as it handles it
        if trial.pickled_error_file and Path(trial.pickled_error_file).exists():
            error = cloudpickle.loads(Path(trial.pickled_error_file).read_bytes())
            cause = getattr(error, "cause", None)  # a RayTaskError's: the trial's own exception
            return cause if isinstance(cause, BaseException) else error
    except Exception:  # an exception that does not unpickle here
        return None
    return None


def _error_text(error: BaseException | None) -> str:
    """The recorded fail reason: 'Type: message'."""
    if error is None:
        return "the Ray trial raised (see error.txt in its Ray results folder)"
    return f"{type(error).__name__}: {error}"


class RayBackend(Backend):
    """Run a sweep with Ray Tune (local Ray, or `ray_address` / RAY_ADDRESS for a cluster).

    Example (starts a local Ray; `ftsweep launch demo --set backend=ray` does the same):

        .. code-block:: python

            RayBackend(load_sweep("demo", ["backend=ray", "n_trials=4"])).run()
    """

    name = "ray"

    def __init__(self, sweep, *, listener=None, scheduler=None) -> None:
        super().__init__(sweep, listener=listener)
        # A Ray TrialScheduler to use instead of the one the sweep's pruner maps to (a research
        # scheduler, or a test's that pauses trials to check they resume exactly).
        self.scheduler = scheduler

    @classmethod
    def check(cls, sweep) -> None:
        """What Ray cannot run, refused without starting Ray: pruner settings with no Ray translation (PBT's
        mutations included), a PBT sweep without n_trials, GPUs per trial that do not match a distributed trial's
        workers, and a trial bigger than the local Ray this sweep would start (a cluster at `ray.address` is
        measured when the launch joins it; a Ray this process already runs is measured as it is)."""
        spec = sweep.spec
        ray_scheduler_args(spec, spec.budget, sweep.space, source=sweep.source)
        workers = spec.resources.devices_per_trial
        if workers > 1 and spec.ray.gpus_per_trial not in (0, workers):
            raise ConfigError(f"a trial over {workers} devices is {workers} Ray Train workers of one GPU each (NCCL "
                              "takes one process per GPU)", source=sweep.source, key="ray.gpus_per_trial",
                              value=spec.ray.gpus_per_trial,
                              hint=f"Fix: ray.gpus_per_trial: {workers} (or 0: CPU workers, gloo).")
        if _is_pbt(spec) and spec.n_trials is None:
            raise ConfigError("PBT trains a fixed population: set n_trials (its size)", key="n_trials",
                              source=sweep.source)
        running = sys.modules.get("ray")  # a Ray this process already runs or joined is the one the launch uses
        if running is not None and running.is_initialized():
            cluster = running.cluster_resources()
        elif spec.ray.address or os.environ.get("RAY_ADDRESS"):
            return  # a cluster elsewhere: measured when the launch joins it (`_trainable`)
        else:
            cluster = _local_cluster(spec.ray)
        _trials_that_fit(cluster, spec.ray, distributed=workers > 1, source=sweep.source)

    def run(self) -> SweepOutcome:
        ray, tune = _import_ray()
        sweep, spec = self.sweep, self.sweep.spec
        sweep.check()  # before anything is created (once per sweep: a launch has run it already)
        sweep.output_dir.mkdir(parents=True, exist_ok=True)
        metric = sweep.metric_names[0]  # multi-objective sweeps are refused for this backend when they load
        mode = "min" if sweep.direction == "minimize" else "max"
        scheduler = self.scheduler or ray_scheduler(spec, spec.budget, metric, mode, sweep.space, source=sweep.source)
        storage = prepare_storage(sweep.storage_url)
        if isinstance(storage, str):  # OptunaSearch takes a storage object
            storage = optuna.storages.RDBStorage(storage)
        study = optuna.create_study(storage=storage, study_name=sweep.study_name, direction=sweep.direction,
                                    load_if_exists=True)
        # Seeded past the trials already started: a relaunch must not draw its first launch's configs again.
        study.sampler = sampler = build_sampler(spec.sampler, sweep.space, seed=sampler_seed(study, spec.seed),
                                                source=sweep.source)
        for note in record_sweep(study, sweep):  # a sweep revision or a changed space, said once
            self.listener("note", {"text": note})
        hand_sweep_run(study, "launch")  # this driver writes the W&B sweep run when Tune ends
        # The study is the source of truth for resuming; asking it takes queued trials first.
        outcome, remaining = self.begin(study, sweep.storage_url)
        if remaining == 0:
            return outcome
        recorder = StudyRecorder(
            study, metric_name=metric, max_steps=spec.budget.max_steps, listener=self.listener,
            # The objective's own metrics plus what run_trial adds: a new objective needs no list here.
            metric_keys=set(sweep.objective_cls.available_metrics()) | {
                "train_loss", "steps", "stopped_early_at", "interval_train_loss", "train_eval_gap"},
            constraints=spec.constraints,
            tracker=make_tracker(spec.tracking, sweep.output_dir, say=lambda text: self.listener("note", {"text": text})),
            # PBT's fixed population is restarted by Ray's own max_failures only.
            **({} if _is_pbt(spec) else {"retries": spec.retries, "budget": spec.budget, "n_trials": spec.n_trials}),
        )
        if _is_pbt(spec):
            search, param_space = self._population(study, recorder, remaining)
            samples = remaining
        else:
            param_space, samples = None, -1  # StudySearch ends the search: n_trials counts re-runs as the study does
            search = StudySearch(space=DefineByRun(sweep.to_payload()), metric=metric, mode=mode, recorder=recorder,
                                 sampler=sampler, study_name=sweep.study_name, storage=storage, seed=spec.seed)
        join_ray(ray, spec.ray)
        check_shared_results(ray, sweep.output_dir / "ray", source=sweep.source)
        trainable_fn, concurrent = self._trainable(ray, tune)
        tuner = tune.Tuner(trainable_fn, param_space=param_space, run_config=self._run_config(tune, recorder),
                           tune_config=tune.TuneConfig(
                               search_alg=search, scheduler=scheduler,
                               num_samples=samples, max_concurrent_trials=concurrent,
                               # A reused actor would keep a stopped trial's Train run alive; a distributed trial's
                               # actor is only its driver, so a fresh one costs nothing.
                               time_budget_s=spec.timeout, reuse_actors=spec.resources.devices_per_trial == 1))
        self.listener("note", {"text": f"Ray: {ray.cluster_resources()} · Ray results in {sweep.output_dir / 'ray'}"})
        # Not Tuner.restore: a restored searcher only knows trials up to its last checkpoint, so trials
        # finished after it would run again (measured: 12 complete for n_trials 10). Each launch is a
        # fresh Tuner for what the study still lacks.
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        try:
            results = tuner.fit()
        finally:
            for ot_trial in recorder.population.values():  # PBT trials Ray never started: run them next launch
                mark_trial_interrupted(study, ot_trial, "interrupted: never started")
        outcome.ran = len(results)
        outcome.counts = state_counts(study.get_trials(deepcopy=False))
        recorder.tracker.sweep_end(study, sweep.output_dir)
        return outcome

    def _population(self, study: optuna.Study, recorder: StudyRecorder, size: int | None):
        """(searcher, param space) of a PBT sweep. PBT takes no searcher: the population is asked of the study up
        front (the sampler picks the starting points) and each config carries its study trial number."""
        from ray.tune.search import BasicVariantGenerator

        points = []
        for _ in range(size):
            ot_trial = study.ask()
            params = self.sweep.space.sample(ot_trial)
            recorder.population[ot_trial.number] = ot_trial
            TrialRecord.of(ot_trial).stamp(WORKER_ID)
            points.append({**params, STUDY_TRIAL: ot_trial.number})
        # Ray takes preset points only for keys its param space has; a conditional param a point lacks stays
        # ABSENT and the trainable drops it.
        return BasicVariantGenerator(points_to_evaluate=points), {key: ABSENT for point in points for key in point}

    def _trainable(self, ray, tune) -> tuple[Any, int | None]:
        """(Tune trainable with its resources, trials at once) for this sweep's trials, refused if one cannot fit."""
        sweep, ray_options = self.sweep, self.sweep.spec.ray
        if sweep.spec.resources.devices_per_trial > 1:
            # The Tune trial only drives its Ray Train run, whose workers hold the trial's CPUs and GPUs
            # (ray_train.py). Tune cannot see those, so it is told how many trials fit the cluster at once.
            trainable_fn = tune.with_resources(tune.with_parameters(distributed_trainable, settings=train_settings(sweep)),
                                               {"cpu": DRIVER_CPUS})
            fit = _trials_that_fit(ray.cluster_resources(), ray_options, distributed=True, source=sweep.source)
            return trainable_fn, min(ray_options.max_concurrent_trials or fit, fit)
        _trials_that_fit(ray.cluster_resources(), ray_options, distributed=False, source=sweep.source)
        trainable_fn = tune.with_parameters(trainable, payload=sweep.to_payload())
        return (tune.with_resources(trainable_fn, {"cpu": ray_options.cpus_per_trial, "gpu": ray_options.gpus_per_trial}),
                ray_options.max_concurrent_trials)

    def _run_config(self, tune, recorder: StudyRecorder):
        sweep, ray_options = self.sweep, self.sweep.spec.ray
        # Checkpoints hold the adapter only; Ray deletes all but the newest `num_to_keep` per trial.
        # PBT keeps a few more: a trial it clones from must still have the checkpoint it chose.
        keep = ray_options.checkpoints_to_keep or (4 if _is_pbt(sweep.spec) else 1)
        return tune.RunConfig(
            name=f"{sweep.study_name}-{int(time.time())}",  # one Ray experiment folder per launch
            storage_path=str((sweep.output_dir / "ray").resolve()),
            failure_config=tune.FailureConfig(max_failures=ray_options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            callbacks=[StudyCallback(recorder, train_runs=(sweep.output_dir / "ray" / TRAIN_RUNS).resolve()
                                     if sweep.spec.resources.devices_per_trial > 1 else None)],
            verbose=0,
        )


def _is_pbt(spec) -> bool:
    return spec.pruner.name in PRUNERS and PRUNERS.capabilities(spec.pruner.name).get("ray") == "pbt"
