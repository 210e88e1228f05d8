"""The trial engine (objectives/engine/trial.py, callback.py, checkpoint.py) on every registered task:
a real short fine-tune of the bundled tiny model that reports, prunes, diverges, and leaves the
shared base model exactly as it found it (resuming from checkpoints: test_resume.py)."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from objectives import TASKS, TrialDiverged, TrialOptions, get_objective
from objectives.engine.callback import COST_METRICS
from tests.objectives.task_examples import BUDGET, MODEL, TASK_DATA

PARAMS = {"learning_rate": 3e-3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.01,
          "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "target_modules": "attention_qv", "peft_method": "lora"}


@pytest.fixture(scope="module", params=TASKS.names())
def objective(request):
    cls = get_objective(request.param)
    obj = cls(MODEL, TASK_DATA[request.param], BUDGET, seed=0)
    obj.setup()
    return obj


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_trial_runs_real_steps_and_reports_each_evaluation(objective):
    reports = []
    metrics = objective.run_trial(PARAMS, report=lambda step, m: reports.append((step, m)) or False)
    assert metrics["steps"] == BUDGET.max_steps
    assert [step for step, _ in reports] == [2, 4]
    # Generation and answer metrics are computed only when a sweep asks for them (tests/objectives/tasks/
    # test_causal_lm.py, tests/objectives/evaluation/test_answers.py).
    for name in [*(n for n in objective.metrics if n not in objective.task_class.periodic_metrics), *COST_METRICS]:
        assert math.isfinite(metrics[name]), name
    assert not objective.task_class.periodic_metrics & set(metrics)
    assert metrics["eval_loss"] == pytest.approx(reports[-1][1]["eval_loss"])
    if "accuracy" in objective.metrics:
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["f1_macro"] <= 1.0
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)


def test_trial_leaves_base_model_bit_identical(objective):
    before = _snapshot(objective.base_model)
    grads_before = {n: p.requires_grad for n, p in objective.base_model.named_parameters()}
    objective.run_trial({**PARAMS, "target_modules": "all_linear", "learning_rate": 1e-2})
    after = _snapshot(objective.base_model)
    assert before.keys() == after.keys()  # no adapter weights left behind
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.requires_grad for n, p in objective.base_model.named_parameters()} == grads_before
    assert not any("lora" in name for name, _ in objective.base_model.named_modules())


def test_learning_rate_changes_the_outcome(objective):
    slow = objective.run_trial({**PARAMS, "learning_rate": 1e-6})
    fast = objective.run_trial({**PARAMS, "learning_rate": 2e-2})
    assert slow["eval_loss"] != fast["eval_loss"]


def test_a_prune_request_stops_training_and_keeps_the_base_intact(objective):
    before = _snapshot(objective.base_model)
    steps = []
    with pytest.raises(optuna.TrialPruned, match="step 2"):
        objective.run_trial(PARAMS, report=lambda step, m: steps.append(step) or True)
    assert steps == [2]
    after = _snapshot(objective.base_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_exploding_loss_is_reported_as_diverged(objective):
    with pytest.raises(TrialDiverged, match="nan|inf"):
        objective.run_trial({**PARAMS, "learning_rate": float("inf"), "warmup_ratio": 0.0})


def test_a_base_model_left_with_adapter_layers_is_refused(objective):
    from peft import get_peft_model

    leftover = get_peft_model(objective.base_model, objective.peft_config(PARAMS))
    try:
        with pytest.raises(RuntimeError, match="still has adapter layers"):
            objective.run_trial(PARAMS)
    finally:
        leftover.unload()
        if hasattr(objective.base_model, "peft_config"):
            del objective.base_model.peft_config
    objective.run_trial(PARAMS)


def test_trial_trainer_counts_the_same_flops_as_transformers(objective):
    # The trial's Trainer counts the model's parameters once instead of at every step; same FLOPs.
    from transformers import Trainer

    seen = {}

    def compare(model, trainer):
        batch = next(iter(trainer.get_train_dataloader()))
        seen["ours"], seen["stock"] = trainer.floating_point_ops(batch), Trainer.floating_point_ops(trainer, batch)
        seen["total"] = trainer.state.total_flos
        return {}

    objective.run_trial(PARAMS, options=TrialOptions(after_training=compare))
    assert seen["ours"] == seen["stock"] > 0
    assert seen["total"] > 0


def test_the_adapter_comes_off_whatever_ends_the_trial(objective):
    # adapter_on is the one place the base model is restored: an exception inside a trial (here from
    # the caller's after_training hook, with the trained adapter still on) leaves it as it was.
    before = _snapshot(objective.base_model)

    def fail(model, trainer):
        assert any("lora" in name for name, _ in model.named_modules())
        raise KeyError("injected")

    with pytest.raises(KeyError, match="injected"):
        objective.run_trial(PARAMS, options=TrialOptions(after_training=fail))
    after = _snapshot(objective.base_model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(objective.base_model, "peft_config")
    objective.run_trial(PARAMS)
