"""Ray trials bigger than one device: each Tune trial runs a Ray Train `TorchTrainer` of G workers.

Ray's own pattern for tuning distributed runs (Train V2 inside Tune): the Tune trial is a driver that takes
0.01 CPU and launches `TorchTrainer(...).fit()` with `ScalingConfig(num_workers=G)`. Ray Train places the G
workers (on one node or several), sets up their process group (gloo on CPUs, NCCL on GPUs) and the
environment transformers' Trainer reads (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`), so each worker runs the same
`Objective.run_trial` as under the Optuna backend (objectives/engine/distributed.py): data parallel or
FSDP, every rank on its shard of each global batch.

Every rank reports each evaluation with `ray.train.report` (a barrier); rank 0's result, with the checkpoint
only rank 0 writes (the adapter, optimizer, schedule, data position: never the base model), goes to Tune
through Ray's `TuneReportCallback`. So the driver's `StudyRecorder`, Ray's schedulers and searcher see the
same results as from a one-process trial. A scheduler that stops the trial ends its Tune actor, and with it
the Train controller and its workers (Ray actors die with their owner): every rank stops at once, and the
driver frees the workers' placement group (`release_workers`).

Failures: a failed run raises its first worker's own error (diverged, out of memory...), or `RankLost` when
workers were lost, as the Optuna backend does. The Train run of a Tune trial has a fixed name in the sweep's
Ray storage, and Ray Train resumes a run of that name from its newest checkpoint, so a trial Tune re-runs
(`ray.max_failures`) continues where it stopped, on every rank.

Example (what RayBackend does for `resources.devices_per_trial` > 1):

    .. code-block:: python

        trainable = tune.with_resources(tune.with_parameters(distributed_trainable, settings=train_settings(sweep)),
                                        {"cpu": 0.01})
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from objectives import TrialOptions
from objectives.engine.checkpoint import checkpoint_state
from objectives.engine.distributed import RankLost, group_failed

from ..secrets import without_secrets
from ..sweep import Sweep

# Result keys both kinds of Ray trial report, for the driver's StudyRecorder (_ray.py):
DONE_KEY = "ftsweep_done"  # set on a trial's last result: it ran its whole budget
TRAIN_LOGS = "ftsweep_train_logs"  # JSON [[step, {train_loss, learning_rate, grad_norm}], ...] since the last report
TRAIN_GROUP = "ftsweep_train_group"  # the placement group holding the trial's Ray Train workers
RESUME_FROM = "ftsweep_resume_from"  # a re-run's config only: the failed trial's last checkpoint (not a param)
TRAIN_RUNS = "train"  # the Train runs' folder, beside Tune's experiments in <output_dir>/ray


def train_settings(sweep: Sweep) -> dict[str, Any]:
    """What each distributed trial's TorchTrainer is built from (plain values: Tune pickles them)."""
    resources, ray_options = sweep.spec.resources, sweep.spec.ray
    return {
        "payload": sweep.to_payload(),
        "workers": resources.devices_per_trial,
        "strategy": resources.strategy,
        "timeout_s": resources.timeout_s,
        # ray.cpus_per_trial / gpus_per_trial are the whole trial's: each worker has its share.
        "cpus_per_worker": ray_options.cpus_per_trial / resources.devices_per_trial,
        "use_gpu": ray_options.gpus_per_trial > 0,  # one GPU a worker (RayBackend checks gpus_per_trial)
        "storage": str((sweep.output_dir / "ray" / TRAIN_RUNS).resolve()),  # newest_run_checkpoint reads it too
        "keep": ray_options.checkpoints_to_keep or 1,
    }


def local_copy(checkpoint) -> str:
    """A Ray checkpoint copied into a new local folder (the original may live on another node)."""
    with checkpoint.as_directory() as directory:
        copy = tempfile.mkdtemp(prefix="ftsweep-resume-")
        shutil.copytree(directory, copy, dirs_exist_ok=True)
    return copy


def placement_here() -> dict[str, Any]:
    """Where this Ray worker runs: its node, the GPUs Ray assigned it, the devices it can see."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def distributed_trainable(config: dict[str, Any], settings: dict[str, Any]) -> None:
    """One Tune trial as a Ray Train run of `settings["workers"]` workers (see the module docstring)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    params = {k: v for k, v in config.items() if k != RESUME_FROM}
    trainer = TorchTrainer(
        _rank_loop,
        train_loop_config={"params": params, "settings": settings, "trial_id": trial_id,
                           "resume_from": config.get(RESUME_FROM)},
        scaling_config=ray.train.ScalingConfig(num_workers=settings["workers"], use_gpu=settings["use_gpu"],
                                               resources_per_worker={"CPU": settings["cpus_per_worker"]}),
        torch_config=TorchConfig(backend="nccl" if settings["use_gpu"] else "gloo",
                                 timeout_s=int(settings["timeout_s"])),
        run_config=ray.train.RunConfig(
            # One name per Tune trial: a re-run of the trial resumes this run from its newest checkpoint.
            name=trial_id, storage_path=settings["storage"],
            failure_config=ray.train.FailureConfig(max_failures=0),  # Tune's failure_config retries trials
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings["keep"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as exc:
        raise trial_failure(exc) from None


def newest_run_checkpoint(storage: str | Path, trial_id: str) -> str | None:
    """The newest complete checkpoint of Tune trial `trial_id`'s Train run under `storage` (train_settings'), or
    None. Tune does not hold a Train run's checkpoints, so a re-run of a failed distributed trial takes it from
    the run's folder; within a run the steps only grow, so the highest step is the newest."""
    newest = None
    for folder in Path(storage, trial_id).glob("checkpoint_*"):
        try:
            step = int(checkpoint_state(folder)["step"])
        except ValueError:  # cut short while it was written: the one before
            continue
        if newest is None or step > newest[0]:
            newest = (step, folder)
    return str(newest[1]) if newest else None


def trial_failure(exc) -> BaseException:
    """What a failed Train run raises to Tune, so the study records the trial's own cause (diverged, out of
    memory, an error): the first worker's own exception; RankLost when every failure is a worker lost (its
    process died, its health check failed) or its process group failing with it, as the Optuna backend
    raises it (the retry policy treats it as preemption)."""
    import ray.exceptions

    own = []
    for _, failure in sorted(exc.worker_failures.items()):  # rank order: rank 0 first
        while isinstance(failure, ray.exceptions.RayTaskError) and failure.cause is not None:
            failure = failure.cause
        lost = isinstance(failure, ray.exceptions.RayActorError) or type(failure).__name__ == "WorkerHealthCheckFailedError"
        if not (lost or group_failed(failure)):
            own.append(failure)
    if own:
        return own[0]
    first = str(exc).strip().splitlines()
    return RankLost("a worker of the distributed trial was lost: " + " ".join(first[1:3] or first)[:300])


def release_workers(result: dict[str, Any] | None) -> None:
    """Free the placement group of an ended distributed trial's workers (driver side, from its last result).

    When Tune stops a trial (a scheduler's stop, the sweep's timeout) it kills the trial's actor, and the Train
    controller with it, before the controller can remove its workers' placement group. Ray Train's own
    cleaner would, but it watches the controller through Ray's state API, which needs the dashboard, and
    without it the group stays reserved: the next trial waits for its CPUs forever. (Measured: with
    `include_dashboard=False` the second trial of a sweep never started.) Removing a group already removed
    does nothing."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    group_id = (result or {}).get(TRAIN_GROUP)
    if not group_id or not ray.is_initialized():
        return
    group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))
    if placement_group_table(group).get("state") not in (None, "REMOVED"):
        remove_placement_group(group)
    _stop_orphaned_cleaners()


def _stop_orphaned_cleaners() -> None:
    """End Ray Train's placement-group cleaners whose controller is dead. Each Train run starts one (a
    detached actor); without the state API it never learns that its controller died and polls forever, one
    process per stopped trial. Read from Ray's actor table (GCS, no dashboard needed): a cleaner's owner is
    its controller."""
    import ray
    import ray._private.state

    here = ray.get_runtime_context().get_node_id()

    def where(address: dict) -> tuple:
        return address.get("IPAddress"), address.get("Port")

    actors = ray._private.state.actors().values()
    dead_controllers = {where(actor["Address"]) for actor in actors
                        if actor["ActorClassName"] == "TrainController" and actor["State"] == "DEAD"}
    for actor in actors:
        # Its only handle was its controller's, so not ray.kill but its process, which Ray places on the head
        # node (where a local sweep's driver runs; elsewhere it is left). Ray records the actor dead, and a
        # detached cleaner is not restarted.
        if (actor["ActorClassName"] == "PlacementGroupCleaner" and actor["State"] == "ALIVE"
                and where(actor["OwnerAddress"]) in dead_controllers
                and actor["Address"].get("NodeID") == here and actor.get("Pid")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(actor["Pid"], signal.SIGTERM)


def _rank_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker of a trial: set up the objective, resume from the run's checkpoint, train."""
    import ray
    import ray.train
    import torch.distributed as dist

    settings = config["settings"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    objective = Sweep.from_payload(settings["payload"]).make_objective()
    objective.strategy = settings["strategy"]
    objective.setup()
    started = time.monotonic()  # after set-up, as the Optuna backend times a trial
    params = dict(config["params"])
    resume_dir, resumed_from, trained_before = None, 0, 0.0
    # The run's own newest checkpoint (Tune restarted this trial), else the failed trial's this one re-runs.
    previous = ray.train.get_checkpoint() or (
        ray.train.Checkpoint(config["resume_from"]) if config.get("resume_from") else None)
    if previous is not None:
        resume_dir = local_copy(previous)
        state = checkpoint_state(resume_dir)
        resumed_from, trained_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        params = state.get("params", params)
    # Where every rank ran: the study shows the trial's whole placement.
    ranks: list[Any] = [None] * context.get_world_size()
    dist.all_gather_object(ranks, placement_here())
    common = {"placement": json.dumps({**ranks[0], "ranks": ranks}), "resumed_from": resumed_from,
              "params": json.dumps(params), TRAIN_GROUP: ray.util.get_current_placement_group().id.hex()}

    def send(result: dict[str, Any], saved: str | None) -> None:  # every rank: ray.train.report is a barrier
        ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(saved) if saved else None)

    # Rank 0 alone keeps the training logs: the driver reads rank 0's results.
    run_and_report(objective, params, send, common=common, trial_id=config["trial_id"], resume_dir=resume_dir,
                   started=started, trained_before=trained_before, keep_logs=rank == 0)


def run_and_report(objective, params: dict[str, Any], send, *, common: dict[str, Any], trial_id: str,
                   resume_dir: str | None, started: float, trained_before: float, keep_logs: bool = True) -> None:
    """Train `params` in this Ray worker, from `resume_dir` when given, and `send(result, checkpoint_dir)` each
    evaluation with the checkpoint written for it (None when none was), then the last result: the results
    `StudyRecorder` reads, with `common` in each. Both kinds of Ray trial run through this (`_ray.trainable`
    with `tune.report`, `_rank_loop` with `ray.train.report`); Ray's scheduler stops a trial itself. The
    trial's temporary folders, `resume_dir` included, are removed."""
    staged: dict[str, Any] = {"train_logs": []}
    elapsed = lambda: trained_before + time.monotonic() - started  # noqa: E731 (all this trial's runs)

    def on_checkpoint(step: int, folder: Path) -> None:  # (heard on rank 0 only: the checkpoint's one writer)
        staged["dir"] = str(folder)

    def on_log(step: int, logs: dict[str, float]) -> None:
        if keep_logs:
            staged["train_logs"].append([step, logs])  # for the driver's W&B run, with the next report

    def logs_so_far() -> str:
        logs, staged["train_logs"] = staged["train_logs"], []
        return json.dumps(logs)

    def report(step: int, metrics: dict[str, float]) -> bool:
        send({**metrics, "step": step, TRAIN_LOGS: logs_so_far(), "elapsed_s": elapsed(), **common},
             staged.pop("dir", None))
        return False

    trial_dir = tempfile.mkdtemp(prefix="ftsweep-trial-")
    try:
        metrics = objective.run_trial(params, report, TrialOptions(
            trial_dir=trial_dir, checkpoints=True, on_checkpoint=on_checkpoint, on_log=on_log,
            checkpoint_about={"ray_trial_id": trial_id}, resume_from=resume_dir))
    except Exception as exc:
        clean = without_secrets(exc)  # Ray writes the error and its traceback to its own files and log
        if clean is exc:
            raise
        raise clean from None
    finally:
        shutil.rmtree(trial_dir, ignore_errors=True)
        if resume_dir:
            shutil.rmtree(resume_dir, ignore_errors=True)
    send({**metrics, "step": int(metrics["steps"]), DONE_KEY: True, TRAIN_LOGS: logs_so_far(),
          "elapsed_s": elapsed(), "duration_s": elapsed(), **common}, None)
