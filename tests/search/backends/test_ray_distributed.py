"""Distributed trials on the Ray backend (`resources: {devices_per_trial: 2}`): each Tune trial a Ray Train
`TorchTrainer` of 2 workers (gloo on this CPU), with the eval history of the trial in one process, recorded
and logged once per trial; a scheduler's stop ends every worker; a lost worker fails the run, which Tune
re-runs from the Train run's checkpoint; a trial's workers may sit on two nodes."""

from __future__ import annotations

import json
import time

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from search.backends import get_backend
from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.store.storage import open_storage
from search.sweep import load_sweep
from tests.search.distributed_sweeps import BUDGET, DISTRIBUTED, SPACE

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402

COMMON = dict(backend="ray", space=SPACE, sampler={"name": "random"}, pruner="none", budget=BUDGET,
              resources=DISTRIBUTED)


def _study(sweep) -> optuna.Study:
    return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def _alone(sweep, params) -> list[float]:
    """The eval losses of `params` trained in this one process, with the same global batch."""
    seen = []
    sweep.make_objective().run_trial(params, lambda step, metrics: seen.append(metrics["eval_loss"]) or False)
    return seen


def _train_workers(kind: str = "RayTrainWorker") -> list[psutil.Process]:
    """Ray Train processes of `kind` alive on this machine (Ray titles a worker process by its actor class)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(
                kind in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def _all_gone(*kinds: str, within_s: float = 15.0) -> bool:
    """Whether no Ray Train process of `kinds` is alive within `within_s` (a killed actor's process takes a
    moment to exit)."""
    deadline = time.monotonic() + within_s
    while any(_train_workers(kind) for kind in kinds):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_distributed_ray_trial_has_its_one_process_history_one_wandb_run_and_reproduces(write_sweep, ray_module,
                                                                                         tmp_path, strategy):
    from tests.search.wandb_records import read_runs

    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    path = write_sweep(**{**COMMON, "resources": {"devices_per_trial": 2, "strategy": strategy}}, n_trials=2,
                       tracking={"wandb": "offline"})
    sweep = load_sweep(path)
    get_backend("ray")(sweep).run()
    trials = _study(sweep).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        history = t.user_attrs["eval_history"]
        assert [h["step"] for h in history] == [2, 4, 6]
        assert sorted(t.intermediate_values) == [2, 4, 6]  # the searcher and scheduler heard every evaluation
        assert [h["eval_loss"] for h in history] == pytest.approx(_alone(sweep, t.user_attrs["config"]), rel=1e-5)
        assert len(t.user_attrs["placement"]["ranks"]) == 2  # where each worker ran
    runs = [run for run in read_runs(sweep.output_dir / "wandb") if run.job_type == "trial"]
    assert sorted(run.name for run in runs) == ["tiny-trial-0", "tiny-trial-1"]  # once per trial, not per worker
    assert _all_gone("RayTrainWorker", "TrainController", "PlacementGroupCleaner")
    # export + train reproduce the best trial in one process, with the same global batch.
    assert main(["export", str(path), "--out", str(tmp_path / "winner")]) == 0
    assert main(["train", str(tmp_path / "winner" / "winner.yaml"), "--set", f"output_dir={tmp_path / 'trained'}"]) == 0
    record = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert record["reproduction"]["comparable"] and record["reproduction"]["relative_error"] < 1e-4, record


class StopsTheFirstTrialAtStep2(FIFOScheduler):
    """A real Ray scheduler that stops the first trial at its step-2 report (as ASHA stops a bad trial),
    after looking for its workers: both must be alive then, and gone once the trial has ended."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped, self.workers_at_stop = None, []

    def on_trial_result(self, tune_controller, trial, result):
        if self.stopped in (None, trial.trial_id) and result.get("step") == 2:
            self.stopped, self.workers_at_stop = trial.trial_id, _train_workers()
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def test_a_trial_the_scheduler_stops_ends_on_every_worker(write_sweep, ray_module):
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sweep = load_sweep(write_sweep(**COMMON, n_trials=2, ray={"max_concurrent_trials": 1}))
    scheduler = StopsTheFirstTrialAtStep2()
    get_backend("ray")(sweep, scheduler=scheduler).run()
    pruned, complete = _study(sweep).trials
    assert pruned.state == TrialState.PRUNED and [h["step"] for h in pruned.user_attrs["eval_history"]] == [2]
    assert complete.state == TrialState.COMPLETE  # the next trial ran on a fresh group
    assert len(scheduler.workers_at_stop) == 2
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in scheduler.workers_at_stop)
    # Nothing of the stopped run is left: no worker, no controller, no placement-group cleaner polling for it.
    assert _all_gone("RayTrainWorker", "TrainController", "PlacementGroupCleaner")


def test_a_lost_worker_fails_the_run_and_the_rerun_goes_on_from_its_checkpoint(write_sweep, ray_module):
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sweep = load_sweep(write_sweep(**COMMON, n_trials=1, objective="tests.search.fault_objectives:RankOneDiesOnceAfterStep4",
                                   ray={"max_failures": 1}))
    get_backend("ray")(sweep).run()
    (trial,) = _study(sweep).trials
    assert trial.state == TrialState.COMPLETE
    (reason,) = trial.user_attrs["retry_reasons"]
    assert reason.startswith("RankLost: a worker of the distributed trial was lost"), reason
    history = trial.user_attrs["eval_history"]
    assert [h["step"] for h in history] == [2, 4, 6] and history[-1]["resumed_from"] == 4
    assert [h["eval_loss"] for h in history] == pytest.approx(_alone(sweep, trial.user_attrs["config"]), rel=1e-5)
    assert _all_gone("RayTrainWorker", "TrainController", "PlacementGroupCleaner")


def test_a_lost_worker_is_preempted_and_the_retry_policy_reruns_it_from_its_checkpoint(write_sweep, ray_module):
    # No ray.max_failures: the sweep's `retries:` re-runs the trial as a new study trial, from the Train run's
    # newest checkpoint.
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sweep = load_sweep(write_sweep(**COMMON, n_trials=1,
                                   objective="tests.search.fault_objectives:RankOneDiesOnceAfterStep4"))
    get_backend("ray")(sweep).run()
    lost, rerun = _study(sweep).trials
    assert lost.state == TrialState.FAIL and lost.user_attrs["failure_cause"] == "preempted"
    assert lost.user_attrs["fail_reason"].startswith("RankLost: a worker of the distributed trial was lost")
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["retry_of"] == lost.number
    history = rerun.user_attrs["eval_history"]
    assert [h["step"] for h in history] == [2, 4, 6] and history[1]["resumed_from"] == 4
    assert [h["eval_loss"] for h in history] == pytest.approx(_alone(sweep, rerun.user_attrs["config"]), rel=1e-5)
    assert _all_gone("RayTrainWorker", "TrainController", "PlacementGroupCleaner")


def test_one_trials_two_workers_run_on_the_two_nodes_of_a_cluster(write_sweep, ray_module):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray_module.init(address=cluster.address, log_to_driver=False)
    try:
        # 3 CPUs a trial: 1.5 a worker, so the two cannot share a node of 2.
        sweep = load_sweep(write_sweep(**COMMON, n_trials=1, ray={"cpus_per_trial": 3}))
        get_backend("ray")(sweep).run()
        (trial,) = _study(sweep).trials
        assert trial.state == TrialState.COMPLETE
        assert len({rank["node_id"] for rank in trial.user_attrs["placement"]["ranks"]}) == 2
        assert [h["eval_loss"] for h in trial.user_attrs["eval_history"]] == pytest.approx(
            _alone(sweep, trial.user_attrs["config"]), rel=1e-5)
    finally:
        ray_module.shutdown()
        cluster.shutdown()


def test_a_failed_train_run_raises_its_workers_own_error_or_rank_lost():
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError

    from objectives.engine.distributed import RankLost
    from objectives.engine.trial import TrialDiverged
    from search.backends.ray_train import trial_failure
    from search.store.retries import failure_cause

    diverged = TrialDiverged("eval loss became nan at step 4")
    own = trial_failure(WorkerGroupError("rank 0 diverged", {1: ActorDiedError(), 0: diverged}))
    assert own is diverged and failure_cause(own) == "diverged"
    lost = trial_failure(WorkerGroupError("[Rank 1 Error Snippet]:\nA worker health check failed.\nWorker info: ...",
                                          {1: ActorDiedError()}))  # (the shape of Ray Train's message)
    assert isinstance(lost, RankLost) and failure_cause(lost) == "preempted"
    assert "A worker health check failed" in str(lost)


@pytest.mark.parametrize(("ray_settings", "key", "why"), [
    ({"cpus_per_trial": 4}, "ray.cpus_per_trial",
     "one trial takes 4.01 CPU (4 for its Ray Train workers, 0.01 for its Tune driver) and the Ray cluster has 2"),
    ({"gpus_per_trial": 1}, "ray.gpus_per_trial", "a trial over 2 devices is 2 Ray Train workers of one GPU each"),
])
def test_ray_resources_that_cannot_hold_a_trials_workers_are_refused(write_sweep, ray_module, capsys, ray_settings,
                                                                    key, why):
    ray_module.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    path = write_sweep(**COMMON, n_trials=1, ray=ray_settings)
    assert main(["launch", str(path)]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert f"{key}: {why}" in error, error
