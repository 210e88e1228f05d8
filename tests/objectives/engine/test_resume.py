"""Exact resume (objectives/engine/checkpoint.py): a trial stopped at step k and resumed from its
checkpoint ends with the eval history of the run that was never interrupted, on every task, with
dropout, a warmup-then-cosine schedule, weight decay and early stopping in play."""

from __future__ import annotations

import json

import optuna
import pytest

from objectives import TASKS, TrainBudget, TrialOptions, get_objective
from objectives.engine.checkpoint import CHECKPOINT_STATE, checkpoint_state, latest_checkpoint
from tests.objectives.task_examples import MODEL, TASK_DATA

# Several evaluations, so the interruption falls mid-schedule; patience so early stopping has state.
BUDGET = TrainBudget(max_steps=10, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64,
                     early_stopping_patience=3)
PARAMS = {"learning_rate": 5e-3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.2, "weight_decay": 0.05,
          "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": "attention_qv", "peft_method": "lora"}
TOLERANCE = 1e-5  # relative, fp32 on CPU


@pytest.fixture(scope="module", params=TASKS.names())
def objective(request):
    obj = get_objective(request.param)(MODEL, TASK_DATA[request.param], BUDGET, seed=0)
    obj.setup()
    return obj


def _history(objective, params=PARAMS, **options):
    seen = []
    metrics = objective.run_trial(params, lambda step, m: seen.append((step, dict(m))) or False, TrialOptions(**options))
    return seen, metrics


def _interrupted_at(objective, step, trial_dir, params=PARAMS):
    """Run until the evaluation at `step`, then stop the way a Ray scheduler pauses a trial: its
    checkpoint handed over with that evaluation's report, which stops it."""
    seen = []
    with pytest.raises(optuna.TrialPruned):
        objective.run_trial(params, lambda s, m: seen.append((s, dict(m))) or s >= step,
                            TrialOptions(trial_dir=trial_dir, checkpoints=True, on_checkpoint=lambda s, folder: None))
    return seen


def _assert_same(resumed, uninterrupted):
    assert [s for s, _ in resumed] == [s for s, _ in uninterrupted]
    for (step, got), (_, want) in zip(resumed, uninterrupted):
        for name in ("eval_loss", "interval_train_loss"):
            assert got[name] == pytest.approx(want[name], rel=TOLERANCE), (step, name)


def test_a_resumed_trial_continues_exactly_where_it_stopped(objective, tmp_path):
    uninterrupted, final = _history(objective)
    first = _interrupted_at(objective, 4, tmp_path)
    assert first == [(s, m) for s, m in first if s <= 4] and [s for s, _ in first] == [2, 4]
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "checkpoint-4" and checkpoint_state(checkpoint)["step"] == 4

    resumed, resumed_final = _history(objective, resume_from=checkpoint)
    _assert_same(first + resumed, uninterrupted)
    # The whole run's mean training loss, not only that of the steps after the resume.
    assert resumed_final["train_loss"] == pytest.approx(final["train_loss"], rel=TOLERANCE)
    # Early stopping, if it stopped the uninterrupted run, stops the resumed one at the same step.
    assert resumed_final["steps"] == final["steps"]
    assert resumed_final.get("stopped_early_at") == final.get("stopped_early_at")


def test_a_checkpoint_holds_the_adapter_and_the_training_state_never_the_base_model(objective, tmp_path):
    _interrupted_at(objective, 2, tmp_path)
    checkpoint = latest_checkpoint(tmp_path)
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            CHECKPOINT_STATE} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    base_bytes = sum(p.numel() * p.element_size() for p in objective.base_model.parameters())
    assert sum(p.stat().st_size for p in checkpoint.iterdir()) < base_bytes / 4
    state = json.loads((checkpoint / CHECKPOINT_STATE).read_text())
    assert state["params"] == PARAMS and state["elapsed_s"] > 0
    # Early stopping's patience count travels in Trainer's state.
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert "EarlyStoppingCallback" in trainer_state["stateful_callbacks"]


def test_a_pruned_trial_writes_no_checkpoint_at_the_evaluation_that_pruned_it(objective, tmp_path):
    with pytest.raises(optuna.TrialPruned):
        objective.run_trial(PARAMS, lambda s, m: s >= 4, TrialOptions(trial_dir=tmp_path, checkpoints=True))
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"  # nothing will resume it from step 4


def test_checkpoints_wait_for_their_interval(objective, tmp_path):
    # The whole trial is shorter than the interval: no checkpoint is worth its cost.
    objective.run_trial(PARAMS, lambda s, m: False,
                        TrialOptions(trial_dir=tmp_path, checkpoints=True, checkpoint_interval_s=600))
    assert latest_checkpoint(tmp_path) is None


def test_checkpoints_are_bounded_and_the_last_step_writes_none(objective, tmp_path):
    objective.run_trial(PARAMS, lambda s, m: False, TrialOptions(trial_dir=tmp_path, checkpoints=True, keep_checkpoints=2))
    kept = sorted(p.name for p in tmp_path.iterdir())
    # The newest is kept for resuming (Trainer may keep early stopping's best rather than the one before).
    assert len(kept) == 2 and latest_checkpoint(tmp_path).name == "checkpoint-8"


def test_every_checkpoint_is_announced_before_its_evaluation_is_reported(objective, tmp_path):
    events = []
    announce = lambda s, folder: events.append(("checkpoint", s, (folder / CHECKPOINT_STATE).is_file()))  # noqa: E731
    objective.run_trial(PARAMS, lambda s, m: events.append(("report", s)) or False,
                        TrialOptions(trial_dir=tmp_path, checkpoints=True, on_checkpoint=announce))
    reported = [e[1] for e in events if e[0] == "report"]
    expected = [event for step in reported for event in (("checkpoint", step, True), ("report", step))]
    if reported[-1] == BUDGET.max_steps:
        expected.remove(("checkpoint", BUDGET.max_steps, True))  # the last step: nothing left to resume
    assert events == expected


def test_a_checkpoint_that_does_not_fit_the_adapter_is_refused(objective, tmp_path):
    _interrupted_at(objective, 2, tmp_path)
    with pytest.raises(ValueError, match="does not fit"):
        objective.run_trial({**PARAMS, "target_modules": "all_linear"},
                            options=TrialOptions(resume_from=latest_checkpoint(tmp_path)))
    objective.run_trial(PARAMS)  # the refused trial left the base model clean


def test_resumed_with_a_new_learning_rate_the_schedule_follows_it(objective, tmp_path):
    # PBT's explore step: the same adapter and optimizer moments, another learning rate from here on.
    _interrupted_at(objective, 4, tmp_path)
    logged = []
    objective.run_trial({**PARAMS, "learning_rate": 5e-4}, lambda s, m: False,
                        TrialOptions(resume_from=latest_checkpoint(tmp_path), on_log=lambda step, logs: logged.append(logs)))
    reference = []
    objective.run_trial({**PARAMS, "learning_rate": 5e-4}, lambda s, m: False,
                        TrialOptions(on_log=lambda step, logs: reference.append(logs)))
    # From the resume on, the learning rate is the new run's, step for step.
    assert [round(x["learning_rate"], 12) for x in logged] == [round(x["learning_rate"], 12)
                                                               for x in reference[-len(logged):]]


def test_a_paused_trial_keeps_the_checkpoint_of_its_step_and_resumes_exactly(objective, tmp_path):
    """PAUSE from the report: the checkpoint of that evaluation's step is written although the checkpoint interval
    has not passed, the trial ends with TrialPaused(step), and its resume ends as the uninterrupted run."""
    from objectives import TrialPaused
    from objectives.engine.callback import PAUSE

    uninterrupted, final = _history(objective)
    seen = []
    with pytest.raises(TrialPaused) as paused:
        objective.run_trial(PARAMS, lambda s, m: seen.append((s, dict(m))) or (PAUSE if s == 6 else False),
                            TrialOptions(trial_dir=tmp_path, checkpoints=True, checkpoint_interval_s=3600))
    assert paused.value.step == 6 and [s for s, _ in seen] == [2, 4, 6]
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "checkpoint-6"  # the only one: the interval skipped those of steps 2 and 4
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-6"]
    resumed, resumed_final = _history(objective, resume_from=checkpoint)
    _assert_same(seen + resumed, uninterrupted)
    assert resumed_final["train_loss"] == pytest.approx(final["train_loss"], rel=TOLERANCE)


def test_lora_plus_trains_b_faster_and_resumes_exactly(objective, tmp_path):
    """`loraplus_lr_ratio` (PEFT's create_loraplus_optimizer): another run than plain LoRA, and its optimizer's
    groups -- lora_B at ratio x the learning rate -- survive a checkpoint, so a resume ends as the uninterrupted run."""
    from objectives.engine.arguments import loraplus_optimizer

    params = {**PARAMS, "loraplus_lr_ratio": 16.0}
    plain, _ = _history(objective)
    uninterrupted, final = _history(objective, params)
    assert uninterrupted[-1][1]["eval_loss"] != pytest.approx(plain[-1][1]["eval_loss"], rel=1e-4)
    first = _interrupted_at(objective, 4, tmp_path, params)
    resumed, _ = _history(objective, params, resume_from=latest_checkpoint(tmp_path))
    _assert_same(first + resumed, uninterrupted)

    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments
    import copy

    model = get_peft_model(copy.deepcopy(objective.base_model), LoraConfig(r=4, lora_alpha=8))
    args = TrainingArguments(output_dir=str(tmp_path / "x"), learning_rate=1e-3, weight_decay=0.01, report_to=[])
    groups = {round(g["lr"], 9): len(g["params"]) for g in loraplus_optimizer(model, args, 16).param_groups if g["params"]}
    assert groups[1e-3] == groups[1.6e-2] > 0  # one lora_A per lora_B, B at 16x
