"""Ray-only behaviour: fractional (declared) GPUs and a two-node cluster on this one machine.
Each test starts and stops its own Ray, so this module never shares one with another."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.backends import get_backend
from search.sweep import load_sweep
from search.store.storage import JOURNAL, open_storage

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


def _run(write_sweep, **changes) -> optuna.Study:
    sweep = load_sweep(write_sweep(backend="ray", **changes))
    get_backend("ray")(sweep).run()
    return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def test_ray_fractional_gpus_run_eight_trials_at_once_on_their_own_devices(write_sweep, ray_module):
    # Declared (fake) GPUs: Ray assigns them and sets CUDA_VISIBLE_DEVICES; torch runs on the CPU here.
    ray_module.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    study = _run(write_sweep, n_trials=8,
                 ray={"cpus_per_trial": 0.25, "gpus_per_trial": 0.5, "max_concurrent_trials": 8},
                 budget={"max_steps": 2, "eval_every": 2})
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    starts = sorted(t.datetime_start for t in trials)
    ends = sorted(t.datetime_complete for t in trials)
    assert starts[-1] < ends[0]  # all eight were running at the same time
    for t in trials:
        placement = t.user_attrs["placement"]
        assert len(placement["gpu_ids"]) == 1  # half a GPU: one device
        assert placement["cuda_visible_devices"] == placement["gpu_ids"][0]
    per_gpu = [t.user_attrs["placement"]["gpu_ids"][0] for t in trials]
    assert sorted(per_gpu.count(g) for g in set(per_gpu)) == [2, 2, 2, 2]


def test_ray_trials_land_on_both_nodes_of_a_two_node_cluster(write_sweep, ray_module):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray_module.init(address=cluster.address, log_to_driver=False)
    try:
        study = _run(write_sweep, n_trials=4, budget={"max_steps": 2, "eval_every": 2},
                     ray={"max_concurrent_trials": 2})
        nodes = {t.user_attrs["placement"]["node_id"] for t in study.get_trials()}
        assert len(nodes) == 2
        assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    finally:
        ray_module.shutdown()
        cluster.shutdown()


def test_killed_driver_resumes_without_rerunning_finished_trials(write_sweep, ray_module, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = write_sweep(backend="ray", n_trials=10, budget={"max_steps": 20, "eval_every": 4},
                       ray={"num_cpus": 2})
    sweep = load_sweep(path)
    repo = Path(__file__).resolve().parents[3]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "launch", str(path)], cwd=repo, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)

    def complete() -> int:
        # The default journal file may be read by other processes while the driver writes it.
        if not Path(sweep.storage_url.removeprefix(JOURNAL)).exists():
            return 0
        try:
            study = optuna.load_study(study_name="tiny", storage=open_storage(sweep.storage_url))
        except KeyError:  # the file exists, the study not yet
            return 0
        return sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))

    deadline = time.monotonic() + 240
    while complete() < 3 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    before = optuna.load_study(study_name="tiny", storage=open_storage(sweep.storage_url))
    finished = {t.number: t.value for t in before.get_trials(states=(TrialState.COMPLETE,))}
    assert 3 <= len(finished) < 10, f"the driver should have been killed mid-sweep:\n{(tmp_path / 'driver.log').read_text()}"

    resumed = load_sweep(path)  # the same sweep again: the study says what is left
    get_backend("ray")(resumed).run()
    study = optuna.load_study(study_name="tiny", storage=open_storage(sweep.storage_url))
    trials = study.get_trials()
    assert {t.number: t.value for t in trials if t.number in finished} == finished  # not re-run
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 10, [(t.number, t.state) for t in trials]
    assert TrialState.RUNNING not in {t.state for t in trials}, [(t.number, t.state, t.user_attrs) for t in trials]


FAILS_ONCE = "tests.search.ray_objectives:FailsOnceObjective"


@pytest.mark.parametrize("max_failures", [1, 0])
def test_trial_that_fails_once_is_retried_from_its_checkpoint(write_sweep, ray_module, tmp_path, max_failures):
    marker = tmp_path / "failed-once"
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                    runtime_env={"env_vars": {"FTSWEEP_FAIL_MARKER": str(marker)}})
    study = _run(write_sweep, n_trials=2, objective=FAILS_ONCE,
                 ray={"max_failures": max_failures, "max_concurrent_trials": 1})
    first, second = study.get_trials()
    assert marker.read_text() == "failed at step 2\n"
    assert second.state == TrialState.COMPLETE
    if max_failures:
        # Retried from the adapter saved at step 2: only the remaining steps ran again.
        assert first.state == TrialState.COMPLETE
        assert first.user_attrs["retry_reasons"] == ["RuntimeError: injected failure at step 2"]
        assert [(h["step"], h.get("resumed_from", 0)) for h in first.user_attrs["eval_history"]] == [(2, 0), (4, 2)]
        assert first.user_attrs["metrics"]["steps"] == 4
    else:  # no retries: the trial fails with its reason and the sweep goes on
        assert first.state == TrialState.FAIL
        assert first.user_attrs["fail_reason"] == "RuntimeError: injected failure at step 2"


KILLED_ONCE = "tests.search.ray_objectives:KilledOnceObjective"


@pytest.mark.parametrize(("objective", "retries", "cause", "reason"), [
    (KILLED_ONCE, {}, "preempted", "ActorDiedError"),  # its worker process died: re-run by default
    (FAILS_ONCE, {"retry_errors": True}, "error", "RuntimeError: injected failure at step 2"),
])
def test_failed_trial_is_rerun_by_the_retry_policy_from_its_checkpoint(write_sweep, ray_module, tmp_path, objective,
                                                                       retries, cause, reason):
    # Without ray.max_failures: the sweep's `retries:` decides, as on the Optuna backend.
    marker = tmp_path / "failed-once"
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                    runtime_env={"env_vars": {"FTSWEEP_FAIL_MARKER": str(marker)}})
    study = _run(write_sweep, n_trials=2, objective=objective, retries=retries, ray={"max_concurrent_trials": 1})
    trials = study.get_trials()
    assert marker.read_text().endswith("at step 2\n")
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2 and states.count(TrialState.FAIL) == 1, states
    lost = next(t for t in trials if t.state == TrialState.FAIL)
    assert lost.user_attrs["failure_cause"] == cause and reason in lost.user_attrs["fail_reason"]
    rerun = next(t for t in trials if t.user_attrs.get("retry_of") == lost.number)
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["retry_cause"] == cause
    assert rerun.params == lost.params
    # Went on from the checkpoint of step 2: the lost trial's curve up to there, then only the remaining steps.
    assert [(h["step"], h.get("resumed_from", 0)) for h in rerun.user_attrs["eval_history"]] == [(2, 2), (4, 2)]
    assert rerun.user_attrs["eval_history"][0]["eval_loss"] == lost.user_attrs["eval_history"][0]["eval_loss"]
    assert rerun.intermediate_values.keys() == {2, 4}


def test_pbt_clones_adapters_and_mutates_params_keeping_only_adapter_checkpoints(write_sweep, ray_module, tmp_path):
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    study = _run(write_sweep, n_trials=4, budget={"max_steps": 8, "eval_every": 2},
                 # Synchronous PBT: every 2 steps the worse half clones the better half (asynchronous PBT
                 # decides by timing, which a test cannot pin down).
                 pruner={"name": "pbt", "args": {"perturbation_interval": 2, "quantile_fraction": 0.5,
                                                 "synch": True}},
                 ray={"cpus_per_trial": 0.5})
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    clones = [h for t in trials for h in t.user_attrs["eval_history"] if "cloned_from" in h]
    assert clones, "PBT should have cloned at least one trial into another"
    numbers = {t.number for t in trials}
    for t in trials:
        for entry in t.user_attrs["eval_history"]:
            if "cloned_from" in entry:  # went on from another trial's adapter, from that trial's step
                assert entry["cloned_from"] in numbers - {t.number} and entry["resumed_from"] > 0
    for t in trials:  # the curve goes on from each clone's step: steps strictly increase up to the budget
        steps = [h["step"] for h in t.user_attrs["eval_history"]]
        assert steps == sorted(set(steps)) and steps[-1] == 8
    checkpoints = list((tmp_path / "runs" / "ray").rglob("checkpoint_*"))
    assert checkpoints
    for checkpoint in checkpoints:  # the adapter and the training state, never a copy of the base model
        assert sorted(p.name for p in checkpoint.iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "ftsweep_checkpoint.json",
            "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json"]
    per_trial = {}
    for checkpoint in checkpoints:
        per_trial[checkpoint.parent] = per_trial.get(checkpoint.parent, 0) + 1
    assert max(per_trial.values()) <= 4  # Ray deleted the older ones


@pytest.mark.parametrize(("changes", "key", "words"), [
    ({"pruner": {"name": "pbt", "args": {"mutations": {"lora_r": [4, 8]}}}}, "pruner.args.mutations.lora_r",
     "cannot change this param while training"),
    ({"pruner": {"name": "pbt"}, "n_trials": None, "timeout": 60}, "n_trials", "fixed population"),
    ({"pruner": {"name": "pbt", "args": {"mutations": {"lora_dropout": {"low": 0, "high": 0.1}}}},
      "space": {"params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2},
                           "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
                           "lora_dropout": {"type": "float", "low": 0, "high": 0.1,
                                            "when": {"lr_scheduler_type": "cosine"}}}}},
     "pruner.args.mutations.lora_dropout", "conditional"),
    ({"pruner": {"name": "pbt", "args": {"burn_in": 3}}}, "pruner.args", "not supported"),
])
def test_bad_pbt_settings_are_refused_before_any_trial_runs(write_sweep, changes, key, words):
    from spaces import ConfigError

    sweep = load_sweep(write_sweep(backend="ray", **changes))
    with pytest.raises(ConfigError, match=words) as caught:
        get_backend("ray")(sweep).run()
    assert caught.value.key == key
    assert not ray.is_initialized()
    assert not sweep.output_dir.exists()  # refused before the study (or anything) was created
