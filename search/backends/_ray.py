"""The Ray Tune backend: the same sweep file, spaces and objectives, trials spread over a Ray cluster.

- Search: Ray's `OptunaSearch` driven by the sweep's own Optuna sampler and define-by-run space, so
  TPE, conditional and derived params behave as under the Optuna backend. Its study lives in the
  sweep's storage: every Ray trial is an Optuna trial there (params, intermediate values, state,
  user attributes), so `status`/`best`/`export` need no Ray-specific code.
- Early stopping: the sweep's pruner is mapped to a Ray scheduler (ASHA, HyperBand, median stopping);
  a trial a scheduler stops is recorded PRUNED. `pruner: {name: pbt}` is Ray-only.
- Workers: the objective is set up once per worker process and reused across trials (actor reuse).

ray is optional (`pip install 'ftsweep[ray]'`) and imported only here.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from spaces import ConfigError

from ..pruners import ALIASES
from ..samplers import build_sampler
from ..study import WORKER, prepare_storage, record_sweep
from ._base import Backend, SweepOutcome

INSTALL_HINT = "pip install 'ftsweep[ray]'"
DONE_KEY = "ftsweep_done"  # set on a trial's last result: it ran its whole budget


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("backend 'ray' needs Ray Tune", key="backend", value="ray",
                          hint=f"Fix: {INSTALL_HINT}") from None
    return ray, tune


# ------------------------------------------------------------------------------------ worker side

_WORKER_OBJECTIVES: dict[str, Any] = {}


def _worker_objective(payload: str):
    """The objective for this sweep in this worker process, set up on first use only."""
    objective = _WORKER_OBJECTIVES.get(payload)
    if objective is None:
        from ..spec import Sweep

        sweep = Sweep.from_payload(payload)
        objective = sweep.make_objective()
        objective.setup()
        _WORKER_OBJECTIVES.clear()  # one sweep per worker at a time: free the previous base model
        _WORKER_OBJECTIVES[payload] = objective
    return objective


def trainable(config: dict[str, Any], payload: str) -> None:
    """One Ray trial: a short fine-tune with `config`, every evaluation sent to `tune.report`."""
    import ray
    from ray import tune

    objective = _worker_objective(payload)
    # Where this trial ran, so the study shows placement: node, GPUs Ray assigned, devices it could see.
    # JSON text: Tune flattens nested dicts in results.
    placement = json.dumps({"node_id": ray.get_runtime_context().get_node_id(),
                            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")})

    def report(step: int, metrics: dict[str, float]) -> bool:
        tune.report({**metrics, "step": step, "placement": placement})
        return False  # Ray's scheduler stops trials itself

    started = time.monotonic()
    metrics = objective.run_trial(config, report)
    tune.report({**metrics, DONE_KEY: True, "duration_s": time.monotonic() - started, "placement": placement})


# ------------------------------------------------------------------------------------ driver side


try:  # Ray is optional: without it this module still imports, and RayBackend says how to install it.
    from ray.tune.search.optuna import OptunaSearch as _OptunaSearch
except ImportError:  # pragma: no cover - exercised only without the extra
    _OptunaSearch = object


class DefineByRun:
    """The sweep's space as a picklable define-by-run function (Ray checkpoints its searcher)."""

    def __init__(self, payload: str) -> None:
        self.payload = payload
        self._space = None

    def __call__(self, trial):
        if self._space is None:
            from ..spec import Sweep

            self._space = Sweep.from_payload(self.payload).space
        params = self._space.sample(trial)
        searched = set(self._space.searched_names)
        return {k: v for k, v in params.items() if k not in searched}  # fixed and derived, as constants

    def __getstate__(self):
        return {"payload": self.payload, "_space": None}


class StudySearch(_OptunaSearch):
    """OptunaSearch that records ftsweep's per-trial attributes and tells PRUNED for stopped trials."""

    def __init__(self, *args, metric_name: str, metric_keys: set[str], max_steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.metric_name = metric_name
        self.metric_keys = metric_keys | {metric_name}  # what of a Ray result is the trial's own metrics
        self.max_steps = max_steps
        self.histories: dict[str, list[dict]] = {}
        self.fail_reasons: dict[str, str] = {}

    def _running(self, trial_id: str) -> bool:
        """Whether the study trial behind `trial_id` can still be written. After `Tuner.restore` the
        searcher is as it was at its last checkpoint, so Ray may replay trials already finished."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return False
        ot_trial = self._ot_trials[trial_id]
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state != TrialState.RUNNING:
            self._completed_trials.add(trial_id)
            return False
        return True

    def _attr(self, trial_id: str, key: str, value: Any) -> None:
        if self._running(trial_id):
            self._ot_study._storage.set_trial_user_attr(self._ot_trials[trial_id]._trial_id, key, value)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._attr(trial_id, "config", config)
            self._attr(trial_id, "worker", WORKER)  # the driver owns the record: a dead driver's trial is stale
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._running(trial_id) or self.metric_name not in result or result.get(DONE_KEY):
            return
        step = int(result.get("step", result.get("training_iteration", 0)))
        history = self.histories.setdefault(trial_id, [])
        if not history and "placement" in result:
            self._attr(trial_id, "placement", json.loads(result["placement"]))
        history.append({"step": step, **{k: v for k, v in result.items() if k in self.metric_keys}})
        self._attr(trial_id, "eval_history", history)
        if step not in self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id).intermediate_values:
            self._ot_trials[trial_id].report(float(result[self.metric_name]), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not self._running(trial_id):
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric_name)
        step = int((result or {}).get("step", 0))
        if value is not None and not (result or {}).get(DONE_KEY) and step not in ot_trial.storage.get_trial(
                ot_trial._trial_id).intermediate_values:
            # A scheduler that stops a trial consumes its last result without passing it on.
            self.on_trial_result(trial_id, result)
        if result and "placement" in result:
            self._attr(trial_id, "placement", json.loads(result["placement"]))
        # A trial stopped at its last step by a scheduler (ASHA stops at max_t) did run its budget.
        ran_budget = bool(result) and (result.get(DONE_KEY) or step >= self.max_steps)
        if error:
            self._attr(trial_id, "fail_reason", self.fail_reasons.get(trial_id, "the Ray trial raised"))
            state, value = TrialState.FAIL, None
        elif ran_budget and value is not None and math.isfinite(value):
            metrics = {k: v for k, v in result.items() if k in self.metric_keys}
            self._attr(trial_id, "metrics", metrics)
            if "duration_s" in result:
                self._attr(trial_id, "duration_s", result["duration_s"])
            state = TrialState.COMPLETE
        else:  # a scheduler stopped it before its budget ran out
            state, value = TrialState.PRUNED, None
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # never let bookkeeping end a sweep
            optuna.logging.get_logger("ftsweep").warning("could not record Ray trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def _scheduler(spec, budget, metric: str, mode: str):
    from ray.tune import schedulers

    name = ALIASES.get(spec.pruner.name, spec.pruner.name)
    args = dict(spec.pruner.args)
    common = dict(time_attr="step", metric=metric, mode=mode)
    if name in ("none",):
        return None
    if name == "successive_halving":
        args.setdefault("grace_period", budget.eval_every)
        args.setdefault("max_t", budget.max_steps)
        args.setdefault("reduction_factor", 4)
        return schedulers.ASHAScheduler(**common, **_only(args, ("grace_period", "max_t", "reduction_factor",
                                                                 "brackets")))
    if name == "hyperband":
        args.setdefault("max_t", budget.max_steps)
        return schedulers.HyperBandScheduler(**common, **_only(args, ("max_t", "reduction_factor")))
    if name == "median":
        return schedulers.MedianStoppingRule(
            **common, grace_period=float(args.get("n_warmup_steps", budget.eval_every)),
            min_samples_required=int(args.get("n_startup_trials", 3)),
        )
    if name == "pbt":
        mutations = args.get("mutations", {"learning_rate": [1e-5, 1e-4, 1e-3, 1e-2]})
        return schedulers.PopulationBasedTraining(**common, perturbation_interval=args.get(
            "perturbation_interval", budget.eval_every), hyperparam_mutations=mutations)
    raise ConfigError(f"the {name} pruner has no Ray equivalent", key="pruner.name", value=spec.pruner.name,
                      allowed=["none", "successive_halving (asha)", "hyperband", "median", "pbt"])


def _only(args: dict, allowed: tuple[str, ...]) -> dict:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ConfigError(f"Ray scheduler argument(s) {unknown} not supported", key="pruner.args",
                          allowed=list(allowed))
    return args


class RayBackend(Backend):
    """Run a sweep with Ray Tune (local Ray, or `ray_address` / RAY_ADDRESS for a cluster).

    Example:
        >>> from search.spec import load_sweep
        >>> RayBackend(load_sweep("demo", ["backend=ray", "n_trials=4"])).run()  # doctest: +SKIP
    """

    name = "ray"

    def run(self) -> SweepOutcome:
        ray, tune = _import_ray()
        sweep, spec = self.sweep, self.sweep.spec
        sweep.output_dir.mkdir(parents=True, exist_ok=True)
        # Fail fast on bad model/data before any worker starts.
        sweep.make_objective().check_sources()
        storage_url = prepare_storage(sweep.storage_url)
        storage = optuna.storages.RDBStorage(storage_url) if "://" in storage_url else storage_url
        metric = spec.metric.name
        mode = "min" if sweep.direction == "minimize" else "max"
        space = sweep.space

        scheduler = _scheduler(spec, spec.budget, metric, mode)  # bad pruner settings fail before the study exists
        study = optuna.create_study(storage=storage, study_name=sweep.study_name, direction=sweep.direction,
                                    load_if_exists=True)
        record_sweep(study, sweep)
        # The study is the source of truth for resuming; OptunaSearch's ask() takes queued trials first.
        outcome, remaining = self.begin(study, storage_url)
        if remaining == 0:
            return outcome
        search = StudySearch(
            space=DefineByRun(sweep.to_payload()), metric=metric, mode=mode, metric_name=metric,
            max_steps=spec.budget.max_steps,
            # The objective's own metrics plus what run_trial adds: a new objective needs no list here.
            metric_keys=set(sweep.objective_cls.metrics) | {"train_loss", "steps"},
            sampler=build_sampler(spec.sampler, space, seed=spec.seed, source=sweep.source),
            study_name=sweep.study_name, storage=storage, seed=spec.seed,
        )
        ray_options = spec.ray
        if not ray.is_initialized():
            address = ray_options.address or os.environ.get("RAY_ADDRESS")
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": ray_options.num_cpus, "num_gpus": ray_options.num_gpus}))
        trainable_fn = tune.with_parameters(trainable, payload=sweep.to_payload())
        trainable_fn = tune.with_resources(trainable_fn, {"cpu": ray_options.cpus_per_trial,
                                                          "gpu": ray_options.gpus_per_trial})
        run_config = tune.RunConfig(
            name=f"{sweep.study_name}-{int(time.time())}",  # one Ray experiment folder per launch storage_path=str(sweep.output_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=ray_options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        )
        tune_config = tune.TuneConfig(
            search_alg=search, scheduler=scheduler,
            num_samples=-1 if remaining is None else remaining, max_concurrent_trials=ray_options.max_concurrent_trials,
            time_budget_s=spec.timeout, reuse_actors=True,
        )
        self.listener("note", {"text": f"Ray: {ray.cluster_resources()} · Ray results in {sweep.output_dir / 'ray'}"})
        # Not Tuner.restore: a restored searcher only knows trials up to its last checkpoint, so trials
        # finished after it would run again (measured: 12 complete for n_trials 10). Each launch is a
        # fresh Tuner for what the study still lacks.
        tuner = tune.Tuner(trainable_fn, tune_config=tune_config, run_config=run_config)
        results = tuner.fit()
        states = [t.state for t in study.get_trials(deepcopy=False)]
        outcome.ran = len(results)
        outcome.counts = {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}
        return outcome

