"""The Optuna backend: trials run one after another in this process, on a study in any Optuna storage.

Flow of `OptunaBackend.run()`:
1. set the objective up once (tokenizer, base model, data) — bad data or model fail here, before
   the study is touched;
2. create or load the study (`load_if_exists`), check its direction matches;
3. recover: trials a dead process left RUNNING become FAIL, interrupted trials are queued again;
4. `study.optimize` until the study holds `n_trials` finished trials (or `timeout`), catching every
   trial exception so one bad trial never ends the sweep.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import optuna

from objectives import TrialDiverged, TrialOptions, TrialPaused
from objectives.engine.callback import PAUSE
from objectives.engine.checkpoint import checkpoint_problem, checkpoint_state, latest_checkpoint
from objectives.engine.distributed import RankGroup, run_distributed_trial
from spaces import ConfigError

from ..components import build_pruner, build_sampler
from ..observers.tracking import make_tracker
from ..secrets import redact_url
from ..store.pausing import park, pauses_now
from ..store.queue import NoTrialLeft, QueueStudy, to_be_ended, top_up_slots
from ..store.record import (
    trial_by_number,
    EVAL_HISTORY,
    OVERRIDES,
    PAUSED_AT,
    RETRY_OF,
    RETRY_REASON,
    STEP,
    STUDY_DEADLINE,
    TrialRecord,
    finished_count,
    hand_sweep_run,
    record_sweep,
    sampler_seed,
    state_counts,
)
from ..store.recovery import recover_interrupted, retry_stale_trial
from ..store.retries import enqueue_retry, plan_retry
from ..store.storage import WORKER_ID, open_storage, prepare_storage
from ..store.sweep_budget import stop_rule
from ..trials import Ending, decide, from_exception, last_metrics, settle
from ..trials.pack import run_packs
from ._base import Backend, SweepOutcome


class OptunaBackend(Backend):
    """Run a sweep with Optuna: `run()` prepares the study and works on it in this process; `join()`
    works on a study another process prepared (`ftsweep worker`, one of many).

    Example:
        >>> outcome = OptunaBackend(sweep).run()  # conftest.py's tiny sweep, launched already: resumed, done
        >>> outcome.study_name, outcome.counts
        ('tiny', {'complete': 2})
    """

    name = "optuna"
    joined = False  # True in a worker that joined the study: the W&B sweep run is then the launch's or claimed
    tracker = None  # the W&B mirror (a SweepTracker), made by _set_up or by a launch that prepares for workers

    def run(self) -> SweepOutcome:
        self.sweep.check()  # before anything is created (once per sweep: a launch has run it already)
        objective = self._set_up()
        study, outcome, remaining = self.prepare()
        if remaining == 0:
            return self._finish(study, outcome)
        return self.work(objective, outcome)

    def join(self, *, seed_salt: str = WORKER_ID) -> SweepOutcome:
        """Work on an already prepared study until its queue is empty (or its deadline passes)."""
        objective = self._set_up()
        self.joined = True
        sweep = self.sweep
        outcome = SweepOutcome(study_name=sweep.study_name, storage_url=redact_url(sweep.storage_url))
        study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
        recover_interrupted(study, self.sweep.spec.retries)  # trials of dead workers on this node
        self.listener("start", {"study": study, "done": finished_count(study.get_trials(deepcopy=False)),
                                "remaining": None, "requeued": [], "total": sweep.spec.n_trials})
        return self.work(objective, outcome, seed_salt=seed_salt)

    def _set_up(self):
        sweep = self.sweep
        objective = sweep.make_objective()
        self.listener("setup", {"model": sweep.spec.model.name_or_path})
        per_trial = sweep.spec.resources.devices_per_trial
        self.trial_devices = None
        if per_trial > 1:
            # Each trial's ranks load the model themselves: none here, on a device they need.
            self.trial_devices = _trial_devices(per_trial, source=sweep.source)
            objective.check_sources()
        else:
            objective.setup()  # bad data or a bad model fail here, before the study is touched
        self.device = _device(objective) + (f", {per_trial} processes per trial" if per_trial > 1 else "")
        sweep.output_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = self._make_tracker()
        return objective

    def _make_tracker(self):
        return make_tracker(self.sweep.spec.tracking, self.sweep.output_dir,
                            say=lambda text: self.listener("note", {"text": text}))

    def prepare(self, *, sweep_run_by: str = "launch") -> tuple[optuna.Study, SweepOutcome, int | None]:
        """Create or resume the study: record the sweep, recover interrupted trials, queue `--enqueue`
        configs, a slot per trial still owed, and the deadline of `timeout`. Runs in one process.
        `sweep_run_by`: who writes the W&B sweep run, this process ("launch": it stays until the trials end,
        then calls `end_sweep` unless `run` does) or "workers" (`launch --workers 0`: the last worker out)."""
        sweep, spec = self.sweep, self.sweep.spec
        sweep.check()
        if sweep_run_by == "launch" and self.tracker is None:
            self.tracker = self._make_tracker()  # before the study: a W&B setting it refuses stops the launch here
        storage = prepare_storage(sweep.storage_url)
        study = self._create_study(storage)
        hand_sweep_run(study, sweep_run_by)
        outcome, remaining = self.begin(study, sweep.storage_url)
        if spec.n_trials is not None:
            top_up_slots(study, spec.n_trials)
        limits = [spec.timeout, spec.budget.sweep.hours * 3600 if spec.budget.sweep and spec.budget.sweep.hours else None]
        limits = [limit for limit in limits if limit]
        study.set_user_attr(STUDY_DEADLINE, time.time() + min(limits) if limits else None)
        return study, outcome, remaining

    def work(self, objective, outcome: SweepOutcome, *, seed_salt: str | None = None) -> SweepOutcome:
        """Run queued trials until none is left (n_trials) or the deadline passes (timeout)."""
        sweep, spec = self.sweep, self.sweep.spec
        policy = spec.retries
        shared = not sweep.storage_url.startswith("sqlite")
        storage = open_storage(sweep.storage_url, heartbeat=policy if shared else None,
                               on_stale=retry_stale_trial(policy))
        probe = optuna.load_study(study_name=sweep.study_name, storage=storage)
        deadline = probe.user_attrs.get(STUDY_DEADLINE)
        seed = sampler_seed(probe, spec.seed, seed_salt)  # not the first launch's draws again; workers apart
        # (Optuna's TPE defaults to constant_liar: workers treat each other's running trials as bad
        # results and spread out rather than all sampling near the current best.)
        sampler = build_sampler(spec.sampler, sweep.space, seed=seed, source=sweep.source)
        pruner = build_pruner(spec.pruner, budget=spec.budget, source=sweep.source, scores_dir=self.scores_root,
                              metric=sweep.metric_names[0])
        study_cls = QueueStudy if spec.n_trials is not None else optuna.Study
        stop_when = stop_rule(spec.budget.sweep, spec.resources.devices_per_trial)
        extra = dict(waits_for_others=shared, deadline=deadline, stop_when=stop_when,
                     on_idle=lambda s: recover_interrupted(s, policy)) if spec.n_trials is not None else {}
        study = study_cls(study_name=sweep.study_name, storage=storage, sampler=sampler, pruner=pruner, **extra)
        said = []

        def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == optuna.trial.TrialState.PRUNED and PAUSED_AT in trial.user_attrs:
                park(study, trial)  # told PRUNED first: a worker killed in between leaves it ended, not doubled
            outcome.ran += 1
            self.listener("trial_end", {"study": study, "trial": trial})
            reason = getattr(study, "stopped_by", None) or (stop_when(study) if stop_when is not None else None)
            if reason is not None and not said:
                said.append(reason)
                self.listener("note", {"text": f"{reason}: no new trial starts"})
                if not isinstance(study, QueueStudy):
                    study.stop()  # a timeout-only sweep: optimize's own loop stops

        if deadline is not None and time.time() >= deadline:
            return self._finish(study, outcome)  # joined after the sweep's timeout: start nothing
        try:
            if spec.pack.slots > 1:
                run_packs(self, study, objective, deadline, on_trial_end)
            else:
                study.optimize(
                    lambda trial: self._run_trial(trial, objective),
                    timeout=None if deadline is None else deadline - time.time(),
                    catch=(Exception,),  # a failing trial is recorded as FAIL; the sweep goes on
                    callbacks=[on_trial_end],
                )
        except NoTrialLeft:
            pass
        except KeyboardInterrupt:
            outcome.interrupted = True
            raise
        finally:
            self._finish(study, outcome)
        self.tracker.sweep_end(study, sweep.output_dir, worker=self.joined)
        return outcome

    def end_sweep(self, study: optuna.Study) -> None:
        """Write the W&B sweep run from this process, which prepared the study and did not run its trials (the
        launch of local workers, once they have exited): one sweep run with every worker's trials."""
        (self.tracker or self._make_tracker()).sweep_end(study, self.sweep.output_dir)

    def _create_study(self, storage) -> optuna.Study:
        sweep = self.sweep
        study = optuna.create_study(storage=storage, study_name=sweep.study_name, directions=sweep.directions,
                                    load_if_exists=True)
        existing = [d.name.lower() for d in study.directions]
        if existing != sweep.directions:
            raise ConfigError(
                f"study '{sweep.study_name}' already exists with direction(s) {', '.join(existing)}",
                source=sweep.source, key="metric.direction", value=", ".join(sweep.directions),
                hint="Fix: use another study_name, or the same metrics and directions as before.",
            )
        for note in record_sweep(study, sweep):  # a sweep revision or a changed space, said once
            self.listener("note", {"text": note})
        return study

    def _run_trial(self, trial: optuna.Trial, objective) -> float | list[float]:
        sweep = self.sweep
        single = not sweep.multi_objective
        if to_be_ended(trial):
            self.end_paused(trial)
        params, record, tracked = self.start_trial(trial)
        trial_dir = self.trial_dir(trial.number)
        resume_from, history, trained_before = self.replay(trial, params, trial_dir, record, tracked)
        report = self.reporter(trial, record, tracked, history)
        started = time.monotonic()
        elapsed = lambda: trained_before + time.monotonic() - started  # noqa: E731 (all its runs together)
        options = TrialOptions(trial_dir=trial_dir, on_log=tracked.log, checkpoints=True, resume_from=resume_from,
                               checkpoint_interval_s=sweep.spec.retries.checkpoint_interval_s,
                               scores_dir=self.scores_root / f"trial-{trial.number}")
        resources = sweep.spec.resources
        try:
            if resources.devices_per_trial > 1:  # one trial, a process group of its own (engine/distributed.py)
                group = RankGroup(world_size=resources.devices_per_trial, devices=tuple(self.trial_devices or ()),
                                  strategy=resources.strategy, timeout_s=resources.timeout_s,
                                  deadlock_after_s=resources.deadlock_after_s)
                metrics = run_distributed_trial(sweep.make_objective(), params, report, options, group=group)
            else:
                metrics = objective.run_trial(params, report, options)
        except BaseException as exc:
            self.settle_trial(trial, from_exception(exc, last_metrics(history)), record, tracked, elapsed())
            if isinstance(exc, TrialPaused):  # told PRUNED, then its continuation queued (on_trial_end)
                raise optuna.TrialPruned(str(exc)) from None
            raise
        ending = decide(sweep.metric_names, metrics)
        self.settle_trial(trial, ending, record, tracked, elapsed())
        if ending.state == "failed":
            raise TrialDiverged(ending.reason)
        return ending.values[0] if single else ending.values

    def start_trial(self, trial: optuna.Trial) -> tuple[dict[str, Any], TrialRecord, Any]:
        """(params, record, tracked run) of a trial starting on this worker: stamped first (a trial unstamped
        for long belongs to a dead process), sampled, a re-run's changes applied, its start recorded."""
        record = TrialRecord.of(trial)
        record.stamp(WORKER_ID)
        params = self.sweep.space.sample(trial)
        params.update(trial.user_attrs.get(OVERRIDES, {}))  # a re-run's changes, e.g. the halved batch after OOM
        record.started(params, device=self.device)
        self.listener("trial_start", {"trial": trial, "params": params})
        return params, record, self.tracker.trial(self.sweep.study_name, trial.number, params)

    def end_paused(self, trial: optuna.Trial) -> None:
        """End a paused trial's continuation without training: its curve replayed (the study keeps the pair's
        curve on the trial that counts), its checkpoint removed; raises TrialPruned, to be told PRUNED."""
        params, record, tracked = self.start_trial(trial)
        trial_dir = self.trial_dir(trial.number)
        _, history, trained = self.replay(trial, params, trial_dir, record, tracked)
        shutil.rmtree(trial_dir, ignore_errors=True)
        record.ended(duration_s=trained)
        step = history[-1][STEP] if history else 0
        tracked.finish("pruned", {k: v for k, v in (history[-1] if history else {}).items() if k != STEP})
        raise optuna.TrialPruned(f"paused at step {step} and ended: no scheduler promoted it")

    def replay(self, trial: optuna.Trial, params: dict[str, Any], trial_dir: Path, record: TrialRecord,
                tracked) -> tuple[Path | None, list[dict[str, Any]], float]:
        """`_resume_point` of a starting trial: a re-run of a preempted or killed trial goes on from that trial's
        last checkpoint, its curve so far reported again to the pruner, the record and the W&B run."""
        resume_from, history, trained_before = self._resume_point(trial, params, trial_dir)
        for entry in history:
            if not self.sweep.multi_objective:
                trial.report(entry[self.sweep.metric_names[0]], entry[STEP])
            tracked.log(entry[STEP], {k: v for k, v in entry.items() if k != STEP})
        if history:
            record.evaluated(history)
        return resume_from, history, trained_before

    def reporter(self, trial: optuna.Trial, record: TrialRecord, tracked, history: list[dict[str, Any]]):
        """`report(step, metrics) -> prune?` of a trial: recorded, logged, shown, told to the pruner."""
        metric, single = self.sweep.metric_names[0], not self.sweep.multi_objective

        def report(step: int, metrics: dict[str, float]) -> bool:
            history.append({"step": step, **metrics})
            record.evaluated(history)
            tracked.log(step, metrics)
            self.listener("trial_report", {"trial": trial, "step": step, "metrics": metrics})
            if not single or metric not in metrics:
                # Optuna neither stores intermediate values nor prunes for several objectives; a metric computed
                # every k-th evaluation (objective.args.task_metrics_every) is decided on where it is.
                return False
            trial.report(metrics[metric], step)
            if trial.should_prune():
                return True
            return PAUSE if pauses_now(trial, step) else False  # a pausing scheduler's call

        return report

    def settle_trial(self, trial: optuna.Trial, ending: Ending, record: TrialRecord, tracked,
                duration_s: float | None) -> None:
        """The trial's end recorded (search/trials), a failure's re-run queued per the retry policy, and its
        checkpoints removed unless something will resume from them (a re-run, a paused trial's continuation)."""
        requeued = []

        def retry(cause: str) -> tuple[str | None, bool]:
            plan, outcome = plan_retry(trial, cause, self.sweep.spec.retries, self.sweep.spec.budget)
            if plan is not None:
                enqueue_retry(trial.study, trial, plan)  # its checkpoints stay, for the re-run to resume from
                requeued.append(plan)
            return outcome, plan is not None

        settle(ending, record, tracked, duration_s=duration_s, trial=trial,
               constraints=self.sweep.spec.constraints, retry=retry)
        if ending.state != "paused" and not requeued:
            shutil.rmtree(self.trial_dir(trial.number), ignore_errors=True)  # done: nothing will resume it

    @property
    def scores_root(self) -> Path:
        """Where each trial keeps its evaluations' per-example scores (trial-N/step-S.json), kept after it ends."""
        return self.sweep.output_dir / "scores" / self.sweep.study_name

    def trial_dir(self, number: int) -> Path:
        """Where trial `number` keeps its checkpoints while it runs (removed when it ends for good)."""
        return self.sweep.output_dir / "checkpoints" / self.sweep.study_name / f"trial-{number}"

    def _resume_point(self, trial: optuna.Trial, params: dict[str, Any],
                      trial_dir: Path) -> tuple[Path | None, list[dict[str, Any]], float]:
        """(checkpoint, eval history up to it, seconds trained before it) of the trial this one re-runs,
        when that trial left a checkpoint with the same params (an OOM re-run changes the batch: it
        starts over). The checkpoints move to this trial's folder: a later re-run of this one finds them there."""
        retry_of = trial.user_attrs.get(RETRY_OF)
        if retry_of is None:
            return None, [], 0.0
        previous_dir = self.trial_dir(int(retry_of))
        checkpoint = latest_checkpoint(previous_dir)
        state = checkpoint_state(checkpoint) if checkpoint is not None else {}
        problem = checkpoint_problem(checkpoint) if checkpoint is not None else None
        if problem is not None:  # e.g. a paused trial's checkpoint damaged on disk: reported, the trial runs again
            note = (f"the checkpoint of trial {retry_of} at step {state.get('step')} is unreadable ({problem}): "
                    f"trial {trial.number} runs its params again from step 0")
            trial.set_user_attr(RETRY_REASON, "; ".join(filter(None, [trial.user_attrs.get(RETRY_REASON), note])))
            self.listener("note", {"text": f"trial {trial.number}: {note}"})
        if checkpoint is None or problem is not None or state.get("params") != params:
            shutil.rmtree(previous_dir, ignore_errors=True)
            return None, [], 0.0
        shutil.rmtree(trial_dir, ignore_errors=True)
        trial_dir.parent.mkdir(parents=True, exist_ok=True)
        previous_dir.rename(trial_dir)
        step = int(state["step"])
        previous = trial_by_number(trial.study, int(retry_of))
        history = [dict(h, resumed_from=step) if h[STEP] == step else dict(h)
                   for h in previous.user_attrs.get(EVAL_HISTORY, []) if h[STEP] <= step]
        return trial_dir / checkpoint.name, history, float(state.get("elapsed_s", 0.0))

    def _finish(self, study: optuna.Study, outcome: SweepOutcome) -> SweepOutcome:
        trials = study.get_trials(deepcopy=False)
        outcome.counts = state_counts(trials)
        self._drop_unneeded_checkpoints(trials)
        return outcome

    def _drop_unneeded_checkpoints(self, trials) -> None:
        """Remove the checkpoints of finished trials no queued or running re-run will resume from (e.g.
        a killed trial past `retries.max_retries`): checkpoints only live as long as they may be read."""
        root = self.trial_dir(0).parent
        if not root.is_dir():
            return
        awaited = {t.user_attrs.get(RETRY_OF) for t in trials
                   if t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)}
        finished = {t.number for t in trials if t.state.is_finished()}
        for folder in root.glob("trial-*"):
            number = folder.name.removeprefix("trial-")
            if number.isdigit() and int(number) in finished - awaited:
                shutil.rmtree(folder, ignore_errors=True)


def _trial_devices(devices_per_trial: int, *, source: str | None = None) -> list[str] | None:
    """The GPU ids this worker's distributed trials use (its CUDA_VISIBLE_DEVICES, or every GPU), None on CPUs."""
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else [
        str(i) for i in range(torch.cuda.device_count())]
    if len(devices) < devices_per_trial:
        raise ConfigError(f"this worker has {len(devices)} GPU(s) ({','.join(devices)}), fewer than "
                          f"devices_per_trial", source=source, key="resources.devices_per_trial",
                          value=devices_per_trial, hint="Fix: fewer devices per trial, or a worker with more GPUs.")
    return devices[:devices_per_trial]


def _device(objective) -> str:
    """Where this worker's trials train, e.g. 'cuda NVIDIA H200 (CUDA_VISIBLE_DEVICES=1), bfloat16'."""
    import torch

    dtype = str(objective.torch_dtype()).removeprefix("torch.")
    if not torch.cuda.is_available():
        return f"cpu, {dtype}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    return f"cuda {torch.cuda.get_device_name(0)} (CUDA_VISIBLE_DEVICES={visible}), {dtype}"
