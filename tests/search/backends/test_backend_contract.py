"""The contract every backend honours, run against every registered backend (a new backend gets the
whole suite by being registered): a sweep runs, an aggressive scheduler prunes, every trial lands in
the study store with its params and curve, conditional params are honoured, launching again resumes."""

from __future__ import annotations

import io

import optuna
import pytest
from optuna.trial import TrialState

from rich.console import Console

from search.backends import BACKENDS, available_backends, get_backend
from search.observers.progress import SweepProgress
from search.sweep import load_sweep
from search.store import record
from search.store.storage import open_storage


CONDITIONAL = {"params": {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
    "lora_dropout": {"type": "float", "low": 0.0, "high": 0.1, "when": {"lr_scheduler_type": "cosine"}},
    "lora_r": {"type": "categorical", "choices": [4, 8]},
    "lora_alpha": {"type": "derived", "from": "lora_r", "times": 2, "as": "int"},
}}


# Every registered backend; those that start a cluster per module (Ray) are in the slow tier.
@pytest.fixture(scope="module", params=[pytest.param(name, marks=[] if BACKENDS.supports(name, "workers") else
                                                      [pytest.mark.slow]) for name in available_backends()])
def backend(request):
    if request.param == "ray":
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one Ray for the whole module
        yield "ray"
        ray.shutdown()
    else:
        yield request.param


def _run(write_sweep, backend, listener=None, **changes) -> optuna.Study:
    sweep = load_sweep(write_sweep(backend=backend, **changes))
    get_backend(backend)(sweep, listener=listener).run()
    return optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))


def test_runs_and_records_every_trial(write_sweep, backend):
    events = []
    study = _run(write_sweep, backend, n_trials=3, listener=lambda event, details: events.append((event, details)))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # The progress display hears of every report and every end, whichever backend ran the trial.
    ended = [d["trial"] for e, d in events if e == "trial_end"]
    assert sorted((t.number, t.state, t.value) for t in ended) == [(t.number, t.state, t.value) for t in trials]
    reports = sorted((d["trial"].number, d["step"]) for e, d in events if e == "trial_report")
    assert reports == [(t.number, step) for t in trials for step in (2, 4)]
    for t in trials:
        assert sorted(t.intermediate_values) == [2, 4]
        assert t.value == pytest.approx(t.user_attrs["metrics"]["eval_loss"])
        assert set(t.params) <= set(t.user_attrs["config"])
        assert [h["step"] for h in t.user_attrs["eval_history"]] == [2, 4]
    assert study.user_attrs["sweep"]["backend"] == backend


def test_aggressive_scheduler_prunes(write_sweep, backend):
    study = _run(write_sweep, backend, n_trials=8, pruner={"name": "sha", "args": {"reduction_factor": 4}},
                 budget={"max_steps": 8, "eval_every": 2})
    states = [t.state for t in study.get_trials()]
    assert len(states) == 8 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    # No FAIL: every trial after a pruned one found the shared base model without adapter layers
    # (run_trial refuses a base with leftovers), including in Ray's reused actors.
    assert TrialState.FAIL not in states, [t.user_attrs.get("fail_reason") for t in study.get_trials()]
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert max(t.intermediate_values) < 8


def test_conditional_and_derived_params_are_honoured(write_sweep, backend):
    study = _run(write_sweep, backend, n_trials=6, space=CONDITIONAL)
    for t in study.get_trials():
        config = t.user_attrs["config"]
        assert ("lora_dropout" in config) == (config["lr_scheduler_type"] == "cosine")
        assert config["lora_alpha"] == 2 * config["lora_r"]
    assert {t.user_attrs["config"]["lr_scheduler_type"] for t in study.get_trials()} == {"linear", "cosine"}


def test_launching_again_resumes(write_sweep, backend):
    first = _run(write_sweep, backend, n_trials=2)
    before = {t.number: t.value for t in first.get_trials()}
    again = _run(write_sweep, backend, n_trials=4)
    trials = again.get_trials()
    assert len(trials) == 4
    assert {t.number: t.value for t in trials if t.number in before} == before
    # The seeded sampler goes on from the study: the relaunch does not draw the first launch's configs again.
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == len(drawn), drawn



# ------------------------------------------------------------------ one trial record (search/store/record.py)

# What every backend writes on a trial, by its end state; the backends may add the optional keys of
# record.TRIAL_KEYS that say where it ran (device, placement) but nothing undeclared.
COMPLETE_KEYS = {record.CONFIG, record.WORKER, record.EVAL_HISTORY, record.METRICS, record.DURATION}
FAILED_KEYS = {record.CONFIG, record.WORKER, record.FAIL_REASON, record.FAILURE_CAUSE}


def test_every_backend_writes_the_same_record_of_a_complete_trial(write_sweep, backend):
    study = _run(write_sweep, backend, n_trials=2)
    for trial in study.get_trials():
        attrs = trial.user_attrs
        assert trial.state == TrialState.COMPLETE
        assert COMPLETE_KEYS <= set(attrs) <= record.TRIAL_KEYS, sorted(set(attrs) - record.TRIAL_KEYS)
        # The same meanings: the applied params hold the searched ones, the history holds the curve the
        # pruner saw, the final metrics hold the value, the duration is the trial's own.
        assert {k: attrs[record.CONFIG][k] for k in trial.params} == trial.params
        history = attrs[record.EVAL_HISTORY]
        assert {h[record.STEP]: h["eval_loss"] for h in history} == pytest.approx(trial.intermediate_values)
        assert attrs[record.METRICS]["eval_loss"] == pytest.approx(trial.value)
        assert 0 < attrs[record.DURATION] <= trial.duration.total_seconds() + 1
        assert record.config_of(trial) == attrs[record.CONFIG]


def test_every_backend_picks_by_answer_accuracy_with_the_loss_recorded_beside_it(write_sweep, backend):
    from search.sweep import find_sweep_file

    import yaml

    routing = yaml.safe_load(find_sweep_file("routing").read_text())
    study = _run(write_sweep, backend, n_trials=2, metric="choice_accuracy", record_metrics=["exact_match"],
                 objective=routing["objective"], dataset={"source": "bundled:support-routing",
                                                          "max_train_examples": 64, "max_eval_examples": 12})
    for trial in study.get_trials():
        metrics = trial.user_attrs[record.METRICS]
        assert trial.value == metrics["choice_accuracy"] and metrics["choice_accuracy"] in {k / 12 for k in range(13)}
        assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["eval_loss"] > 0
        assert all("choice_accuracy" in e for e in trial.user_attrs[record.EVAL_HISTORY])
    assert study.best_value == max(t.value for t in study.get_trials())


def test_every_backend_writes_the_same_record_of_a_failed_trial(write_sweep, backend):
    study = _run(write_sweep, backend, n_trials=1, objective="tests.search.fault_objectives:NaNLoss")
    [trial] = study.get_trials()
    attrs = trial.user_attrs
    assert trial.state == TrialState.FAIL
    assert FAILED_KEYS <= set(attrs) <= record.TRIAL_KEYS, sorted(set(attrs) - record.TRIAL_KEYS)
    assert attrs[record.FAILURE_CAUSE] == record.DIVERGED
    assert attrs[record.FAIL_REASON].startswith("TrialDiverged"), attrs[record.FAIL_REASON]


# ------------------------------------------------------------------ one ending for every backend (search/trials)

@pytest.fixture(params=["single", "packed"])
def layout(request, backend):
    """How the backend runs the trial: alone, or in a pack of 2 where the backend packs trials."""
    if request.param == "packed" and not BACKENDS.supports(backend, "packs"):
        pytest.skip(f"the {backend} backend does not pack trials")
    return {"pack": {"slots": 2}} if request.param == "packed" else {}


def test_a_non_finite_final_value_fails_the_trial_as_diverged(write_sweep, backend, layout):
    # Training is finite; only the final objective value is not a number (perplexity is inf).
    study = _run(write_sweep, backend, n_trials=2, metric="perplexity", **layout,
                 objective="tests.search.fault_objectives:InfinitePerplexity")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    for trial in trials:
        assert trial.user_attrs[record.FAILURE_CAUSE] == record.DIVERGED
        assert trial.user_attrs[record.FAIL_REASON] == "TrialDiverged: final perplexity is inf"
        # The run finished: its final metrics are recorded beside the reason, on every backend and in packs.
        assert trial.user_attrs[record.METRICS]["perplexity"] == float("inf")
        assert trial.user_attrs[record.METRICS]["eval_loss"] > 0


@pytest.fixture
def optuna_logs():
    """Optuna logging at its default level for one test (a CLI launch earlier in the session lowers it)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    yield
    optuna.logging.set_verbosity(verbosity)


def test_a_password_in_an_error_is_stored_logged_and_tracked_scrubbed(write_sweep, backend, layout, capfd, optuna_logs):
    from tests.search.fault_objectives import STORAGE_PASSWORD
    from tests.search.wandb_records import read_runs

    path = write_sweep(backend=backend, n_trials=2, tracking={"wandb": "offline"}, **layout,
                       objective="tests.search.fault_objectives:RaisesWithStoragePassword")
    sweep = load_sweep(path)
    if layout:  # an error in a pack's shared forward ends the pack's trials and the worker's loop with it
        with pytest.raises(RuntimeError):
            get_backend(backend)(sweep).run()
    else:
        get_backend(backend)(sweep).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    trials = study.get_trials()
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    for trial in trials:
        assert trial.user_attrs[record.FAIL_REASON] == (
            "RuntimeError: could not reach postgresql://sweeper:***@db.internal:5432/optuna")
    runs = [run for run in read_runs(sweep.output_dir / "wandb") if run.job_type == "trial"]
    assert len(runs) == len(trials)
    assert all(run.summary["fail_reason"].endswith("sweeper:***@db.internal:5432/optuna") for run in runs)
    # Nowhere: not in what was printed or logged, nor in any file the sweep wrote (the study, the W&B runs,
    # Ray's own error files).
    out, err = capfd.readouterr()
    assert STORAGE_PASSWORD not in out + err
    if backend == "optuna" and not layout:  # Optuna logs a failed trial's exception: it was logged, scrubbed
        assert "sweeper:***@" in out + err
    leaked = [str(f) for f in sweep.output_dir.rglob("*") if f.is_file() and STORAGE_PASSWORD.encode() in f.read_bytes()]
    assert not leaked


# ------------------------------------------------------------------ the same trial whichever backend runs it

PARITY = dict(n_trials=4, pruner="median", objective="tests.search.timed_objectives:TimedCausalLM",
              tracking={"wandb": "offline"}, budget={"max_steps": 8, "eval_every": 2, "batch_size": 4,
                                                     "eval_batch_size": 16, "max_seq_length": 64},
              ray={"max_concurrent_trials": 2, "cpus_per_trial": 1})


@pytest.fixture(scope="module")
def parity_sweep(backend, tmp_path_factory):
    """One ≥ 4-trial sweep per backend, the default (median) pruner, W&B offline, 2 trials at a time
    where the backend runs several: the record, the W&B runs and the timings the tests below compare."""
    import yaml

    from tests.conftest import TINY_SWEEP, deep_merge

    tmp = tmp_path_factory.mktemp(f"parity-{backend}")
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(deep_merge(TINY_SWEEP, {**PARITY, "backend": backend,
                                                           "output_dir": str(tmp / "runs")})))
    sweep = load_sweep(path)
    console = Console(record=True, width=400, file=io.StringIO())
    with SweepProgress(console, metric="eval_loss") as progress:
        get_backend(backend)(sweep, listener=progress).run()
    study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage_url))
    return sweep, study, tmp, console.export_text()


def test_every_trial_has_one_wandb_run_with_its_config_and_curve(parity_sweep):
    from tests.search.wandb_records import read_runs

    sweep, study, _, _ = parity_sweep
    runs = read_runs(sweep.output_dir / "wandb")
    trial_runs = {run.name: run for run in runs if run.job_type == "trial"}
    trials = study.get_trials()
    assert len(trials) >= 4 and sorted(trial_runs) == sorted(f"tiny-trial-{t.number}" for t in trials)
    [sweep_run] = [run for run in runs if run.job_type == "sweep"]
    # Complete on disk when the sweep returned (W&B's service writes a run's file after finish() returns).
    assert sweep_run.exit_code == 0 and sweep_run.summary["best_trial"] in {t.number for t in trials}
    for trial in trials:
        run = trial_runs[f"tiny-trial-{trial.number}"]
        assert run.group == "tiny"
        assert {k: run.config[k] for k in record.config_of(trial)} == record.config_of(trial)
        logged = {row["_step"]: row["eval_loss"] for row in run.history if "eval_loss" in row}
        recorded = {h[record.STEP]: h["eval_loss"] for h in trial.user_attrs[record.EVAL_HISTORY]}
        assert logged == pytest.approx(recorded)
        assert any("train_loss" in row for row in run.history)  # the training logs too
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[trial.state]
        assert run.summary["state"] == state and state in run.tags
        assert run.exit_code == (1 if state == "failed" else 0)
        if trial.state == TrialState.COMPLETE:
            assert run.summary["eval_loss"] == pytest.approx(trial.value)


def test_every_complete_trial_is_reproduced_by_train_of_its_export(parity_sweep):
    from search.aftersweep.train import train_run
    from search.results.export import export
    from search.sweep import load_run

    _, study, tmp, _ = parity_sweep
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete
    for trial in complete:
        [exported] = export(study, tmp / f"export-{trial.number}", trial=trial.number)
        run, cls = load_run(exported.directory / "winner.yaml", [f"output_dir={tmp / f'train-{trial.number}'}"])
        reproduction = train_run(run, cls)["reproduction"]
        assert reproduction["relative_error"] < 0.01, (trial.number, reproduction)


def test_recorded_durations_are_each_trials_own_time(parity_sweep):
    import json

    from tests.search.timed_objectives import measured_seconds

    sweep, study, _, shown = parity_sweep
    measured = measured_seconds(sweep.output_dir)
    lines = {int(line.split()[1]): line for line in shown.splitlines() if line.strip().startswith("trial ")}
    for trial in study.get_trials():
        seconds = measured[json.dumps(record.config_of(trial), sort_keys=True)]
        assert trial.user_attrs[record.DURATION] == pytest.approx(seconds, rel=0.2), trial.number
        # The progress display's line for the trial shows that duration.
        assert lines[trial.number].rstrip().endswith(f"{trial.user_attrs[record.DURATION]:.1f}s"), lines[trial.number]
