"""Packed sweeps (`pack: {slots: K}`, Optuna backend): K study trials trained at once on one base model, each
reporting to the pruner, told when it ends and replaced at once by a newly asked trial; afterwards each is a
normal trial: the same eval history as unpacked, one record, best/show/export/train unchanged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from objectives.engine.checkpoint import checkpoint_state, latest_checkpoint
from search.cli import main
from search.cli._common import EXIT_BAD_INPUT
from search.store.storage import JOURNAL, load_existing_study
from search.sweep import load_sweep

# Four configs (a grid), dropout 0: a pack must give each the history it has alone.
SPACE = {"params": {
    "learning_rate": {"type": "categorical", "choices": [3e-3, 1e-2]},
    "lora_r": {"type": "categorical", "choices": [4, 8]},
    "lr_scheduler_type": {"type": "fixed", "value": "cosine"},
    "lora_dropout": {"type": "fixed", "value": 0.0},
    "peft_method": {"type": "fixed", "value": "lora"},
    "target_modules": {"type": "fixed", "value": "attention"},
}}
BUDGET = {"max_steps": 6, "eval_every": 2, "batch_size": 4, "eval_batch_size": 16, "max_seq_length": 64}


def _study(path):
    sweep = load_sweep(path)
    return load_existing_study(sweep.study_name, sweep.storage_url)


def _by_params(study):
    return {(t.params["learning_rate"], t.params["lora_r"]): t for t in study.trials}


def test_a_packed_sweep_gives_every_trial_its_unpacked_history_and_a_normal_record(write_sweep, tmp_path, capsys):
    common = dict(space=SPACE, sampler={"name": "grid"}, pruner="none", n_trials=4, budget=BUDGET)
    alone = write_sweep("alone.yaml", **common, study_name="alone", output_dir=str(tmp_path / "alone"))
    packed = write_sweep("packed.yaml", **common, study_name="packed", pack={"slots": 2},
                         output_dir=str(tmp_path / "packed"))
    assert main(["launch", str(alone)]) == 0 and main(["launch", str(packed)]) == 0
    unpacked, pack = _by_params(_study(alone)), _by_params(_study(packed))
    assert sorted(pack) == sorted(unpacked) and len(pack) == 4
    for key, trial in pack.items():
        assert trial.state == optuna.trial.TrialState.COMPLETE
        got, want = trial.user_attrs["eval_history"], unpacked[key].user_attrs["eval_history"]
        assert [h["step"] for h in got] == [h["step"] for h in want] == [2, 4, 6]
        assert [h["eval_loss"] for h in got] == pytest.approx([h["eval_loss"] for h in want], rel=1e-4), key
        assert trial.value == pytest.approx(unpacked[key].value, rel=1e-4)
        # One trial record, as any trial: params applied, placement in the pack, its own slot time.
        assert trial.user_attrs["config"]["lora_r"] == key[1]
        assert trial.user_attrs["pack"]["slots"] == 2 and trial.user_attrs["pack"]["slot"] in (0, 1)
        assert trial.user_attrs["duration_s"] > 0
        assert trial.user_attrs["metrics"]["perplexity"] == pytest.approx(2.718281828 ** trial.value, rel=1e-6)
    assert sorted(t.user_attrs["pack"]["slot"] for t in pack.values()) == [0, 0, 1, 1]
    capsys.readouterr()

    # best / show / export / train read it as any trial.
    study = _study(packed)
    assert main(["best", "packed", "--storage", load_sweep(packed).storage_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["number"] == study.best_trial.number
    assert main(["export", str(packed), "--out", str(tmp_path / "winner")]) == 0
    winner = yaml.safe_load((tmp_path / "winner" / "winner.yaml").read_text())
    assert winner["params"]["lora_r"] == study.best_trial.params["lora_r"]
    assert main(["train", str(tmp_path / "winner" / "winner.yaml"), "--set", f"output_dir={tmp_path / 'trained'}"]) == 0
    record = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert record["reproduction"]["comparable"] and record["reproduction"]["relative_error"] < 0.01, record


def test_pruned_slots_are_refilled_until_the_study_holds_n_trials(write_sweep):
    space = {"params": {**SPACE["params"], "learning_rate": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
                        "lora_r": {"type": "categorical", "choices": [2, 4, 8, 16]}}}
    path = write_sweep(space=space, sampler={"name": "random"}, n_trials=8, budget=BUDGET, pack={"slots": 3},
                       pruner={"name": "median", "args": {"n_startup_trials": 2, "n_warmup_steps": 0}})
    assert main(["launch", str(path)]) == 0
    trials = _study(path).trials
    states = [t.state.name for t in trials]
    assert len(trials) == 8 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
    for t in trials:
        assert t.user_attrs["pack"]["slots"] == 3 and t.user_attrs["eval_history"]
        if t.state.name == "PRUNED":  # stopped at the step the pruner said so, never trained past it
            assert t.user_attrs["eval_history"][-1]["step"] == max(t.intermediate_values)
    # A launch again finds nothing owed: the study holds exactly n_trials.
    assert main(["launch", str(path)]) == 0 and len(_study(path).trials) == 8


@pytest.mark.parametrize(("changes", "key", "why"), [
    ({"space": {"params": {**SPACE["params"], "batch_size": {"type": "categorical", "choices": [4, 8]}}}},
     "space.params.batch_size", "'batch_size' is searched, and the trials of a pack must share it"),
    ({"backend": "ray"}, "pack.slots", "the ray backend runs one trial per process"),
    ({"objective": "sequence_classification", "dataset": {"source": "bundled:support-intents"}, "metric": "f1_macro"},
     "pack.slots", "packed trials are causal_lm trials"),
    ({"budget": {**BUDGET, "gradient_accumulation_steps": 2}}, "budget.gradient_accumulation_steps",
     "packed trials take no budget.gradient_accumulation_steps"),
    ({"space": {"params": {"learning_rate": SPACE["params"]["learning_rate"],
                           "peft_method": {"type": "fixed", "value": "ia3"}}}},
     "space.params.peft_method", "packed slots are LoRA adapters"),
    ({"model": {"name_or_path": "bundled:tiny-support-lm", "quantization": {"bits": 4}}}, "model.quantization",
     "packed slots wrap full-precision linear layers; a quantized base is not packed yet"),
    ({"metric": "bleu"}, "metric", "a packed trial reports eval_loss, perplexity, trainable_params, peak_memory_mb, "
     "latency_ms, not bleu"),
    ({"record_metrics": ["rougeL"]}, "record_metrics", "a packed trial reports eval_loss"),
])
def test_what_a_pack_cannot_share_is_refused_when_the_sweep_loads(write_sweep, capsys, changes, key, why):
    path = write_sweep(**{"space": SPACE, "pack": {"slots": 2}, **changes})
    assert main(["launch", str(path), "--dry-run"]) == EXIT_BAD_INPUT
    error = " ".join(capsys.readouterr().err.split())
    assert f"{key}: {why}" in error, error


def test_a_slot_whose_loss_is_nan_fails_its_trial_alone_and_is_refilled(write_sweep, tmp_path):
    path = write_sweep(objective="tests.search.fault_objectives:NaNInSecondSlot", space=SPACE,
                       sampler={"name": "grid"}, pruner="none", n_trials=4, budget=BUDGET, pack={"slots": 2})
    assert main(["launch", str(path)]) == 0
    trials = _study(path).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert failed and complete and all(t.user_attrs["pack"]["slot"] == 1 for t in failed)
    assert all(t.user_attrs["failure_cause"] == "diverged" and "training loss became nan at step 1"
               in t.user_attrs["fail_reason"] for t in failed)
    # The first slot's trials trained on as if alone.
    alone = write_sweep("alone.yaml", space=SPACE, sampler={"name": "grid"}, pruner="none", n_trials=4,
                        budget=BUDGET, study_name="alone", output_dir=str(tmp_path / "alone"))
    assert main(["launch", str(alone)]) == 0
    unpacked = _by_params(_study(alone))
    for t in complete:
        assert t.user_attrs["pack"]["slot"] == 0
        want = unpacked[(t.params["learning_rate"], t.params["lora_r"])].value
        assert t.value == pytest.approx(want, rel=1e-4)


def test_a_pack_out_of_memory_runs_its_trials_again_in_packs_of_half_the_slots(write_sweep):
    # (Random, not grid: the grid sampler stops the study once its 4 points have been tried, re-runs or not.)
    path = write_sweep(objective="tests.search.fault_objectives:PackOutOfMemoryAbove8Rows", space=SPACE,
                       sampler={"name": "random"}, pruner="none", n_trials=4, budget=BUDGET, pack={"slots": 4})
    assert main(["launch", str(path)]) == 0
    trials = _study(path).trials
    first, reruns = trials[:4], trials[4:]
    assert all(t.state.name == "FAIL" and t.user_attrs["failure_cause"] == "oom" and t.user_attrs["retried"]
               and t.user_attrs["pack"]["slots"] == 4 and "pack of 2 slots" in t.user_attrs["retry"] for t in first)
    assert [t.state.name for t in reruns] == ["COMPLETE"] * 4
    assert all(t.user_attrs["pack"]["slots"] == 2 and t.user_attrs["retry_cause"] == "oom" for t in reruns)
    assert sorted(t.user_attrs["retry_of"] for t in reruns) == [0, 1, 2, 3]
    # The same trials, in smaller packs: the batch is what it was.
    assert all(t.user_attrs["config"].get("batch_size", 4) == 4 for t in reruns)


def test_every_packed_trial_has_its_own_wandb_run(write_sweep):
    from search.store import record
    from tests.search.wandb_records import read_runs

    path = write_sweep(space=SPACE, sampler={"name": "grid"}, pruner="none", n_trials=4, budget=BUDGET,
                       pack={"slots": 2}, tracking={"wandb": "offline"})
    assert main(["launch", str(path)]) == 0
    sweep, study = load_sweep(path), _study(path)
    runs = {run.name: run for run in read_runs(sweep.output_dir / "wandb") if run.job_type == "trial"}
    assert sorted(runs) == sorted(f"tiny-trial-{t.number}" for t in study.trials)
    for trial in study.trials:  # runs open side by side, each with its own trial's config, curve and result
        run = runs[f"tiny-trial-{trial.number}"]
        assert {k: run.config[k] for k in record.config_of(trial)} == record.config_of(trial)
        logged = {row["_step"]: row["eval_loss"] for row in run.history if "eval_loss" in row}
        assert logged == pytest.approx({h["step"]: h["eval_loss"] for h in trial.user_attrs["eval_history"]})
        assert any("train_loss" in row for row in run.history)
        assert run.summary["state"] == "complete" and run.summary["eval_loss"] == pytest.approx(trial.value)


def _both_slots_past_a_checkpoint(path, proc, timeout: float = 240.0) -> None:
    """Wait until both trials of the pack run and have evaluated at 12..60 of their 80 steps."""
    deadline = time.monotonic() + timeout
    storage = load_sweep(path).storage_url
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early ({proc.returncode}):\n{(path.parent / 'launch.log').read_text()}")
        if Path(storage.removeprefix(JOURNAL)).exists():
            try:
                trials = _study(path).trials
            except KeyError:  # the study is not created yet
                trials = []
            steps = [max(t.intermediate_values, default=0) for t in trials if t.state.name == "RUNNING"]
            if len(steps) == 2 and all(12 <= s <= 60 for s in steps):
                return
        time.sleep(0.2)
    raise AssertionError("the pack did not get there in time")


@pytest.mark.slow  # a subprocess sweep, SIGKILLed mid-pack
def test_a_killed_pack_reruns_its_trials_from_their_checkpoints_as_if_never_interrupted(write_sweep, tmp_path):
    changes = dict(space=SPACE, n_trials=2, pack={"slots": 2}, retries={"checkpoint_interval_s": 0},
                   budget={**BUDGET, "max_steps": 80, "eval_every": 4})
    reference = write_sweep("reference.yaml", **changes, output_dir=str(tmp_path / "reference"))
    assert main(["launch", str(reference)]) == 0
    uninterrupted = _by_params(_study(reference))

    path = write_sweep(**changes)
    with (tmp_path / "launch.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "search.cli", "launch", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[3])
    try:
        _both_slots_past_a_checkpoint(path, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    checkpoints = load_sweep(path).output_dir / "checkpoints" / "tiny"
    resumed_at = {n: checkpoint_state(latest_checkpoint(checkpoints / f"trial-{n}"))["step"] for n in (0, 1)}

    assert main(["launch", str(path)]) == 0
    trials = _study(path).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    for retry in trials[2:]:
        want = uninterrupted[(retry.params["learning_rate"], retry.params["lora_r"])]
        history, expected = retry.user_attrs["eval_history"], want.user_attrs["eval_history"]
        assert [h["step"] for h in history] == [h["step"] for h in expected]
        assert [h["resumed_from"] for h in history if "resumed_from" in h] == [resumed_at[retry.user_attrs["retry_of"]]]
        assert [h["eval_loss"] for h in history] == pytest.approx([h["eval_loss"] for h in expected], rel=1e-4)
        assert sorted(retry.intermediate_values) == sorted(want.intermediate_values)  # the pruner saw it all
        assert retry.value == pytest.approx(want.value, rel=1e-4)
        assert retry.user_attrs["pack"]["slots"] == 2
    assert not any(checkpoints.iterdir())  # removed once the trials ended for good


@pytest.mark.slow  # worker subprocesses
def test_each_worker_runs_its_own_pack_and_together_they_stop_at_exactly_n_trials(write_sweep, tmp_path):
    space = {"params": {**SPACE["params"], "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    storage = f"journal:///{tmp_path / 'store' / 'sweeps.journal'}"
    path = write_sweep(space=space, sampler={"name": "tpe", "args": {"n_startup_trials": 4}}, pruner="none",
                       # 60 steps a trial (about 1 s): at 2 steps (0.1 s) one worker once ran all 9 before the
                       # other had set up, on 2 busy cores.
                       n_trials=9, pack={"slots": 2}, budget={**BUDGET, "max_steps": 60, "eval_every": 30})
    assert main(["launch", str(path), "--storage", storage, "--workers", "2"]) == 0
    study = load_existing_study("tiny", storage)
    trials = study.get_trials()
    assert len(trials) == 9 and all(t.state.name == "COMPLETE" for t in trials)  # no overshoot across the packs
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two workers, each its own pack
    assert all(t.user_attrs["pack"]["slots"] == 2 and t.user_attrs["pack"]["slot"] in (0, 1) for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 9


def test_a_multi_objective_packed_sweep_tells_each_trial_all_its_values(write_sweep, tmp_path, capsys):
    """eval_loss against the adapter's size: each packed trial is told both, the ones it has alone."""
    common = dict(space=SPACE, sampler={"name": "grid"}, n_trials=4, budget=BUDGET,
                  metric=[{"name": "eval_loss", "direction": "minimize"},
                          {"name": "trainable_params", "direction": "minimize"}])
    packed = write_sweep(**common, pack={"slots": 2})
    alone = write_sweep("alone.yaml", **common, study_name="alone", output_dir=str(tmp_path / "alone"))
    assert main(["launch", str(packed)]) == 0 and main(["launch", str(alone)]) == 0
    unpacked = _by_params(_study(alone))
    trials = _study(packed).trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" and t.user_attrs["pack"]["slots"] == 2 for t in trials)
    for t in trials:
        want = unpacked[(t.params["learning_rate"], t.params["lora_r"])]
        assert t.values[0] == pytest.approx(want.values[0], rel=1e-4)
        assert t.values[1] == want.values[1]  # the same adapter, parameter for parameter
    assert {t.values[1] for t in trials} == {want.values[1] for want in unpacked.values()}
    assert len({t.values[1] for t in trials}) == 2  # r 4 and r 8
    capsys.readouterr()
    assert main(["best", "tiny", "--storage", load_sweep(packed).storage_url]) == 0
    assert "Pareto" in capsys.readouterr().out
