"""Every registered objective runs a real short fine-tune of the bundled tiny model."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from objectives import OBJECTIVES, DataConfig, ModelConfig, TrainBudget, TrialDiverged, get_objective
from spaces import ConfigError

# One row per registered objective: the bundled data it trains on in tests.
DATA = {
    "causal_lm": DataConfig(source="bundled:support-qa", max_train_examples=64, max_eval_examples=16),
    "sequence_classification": DataConfig(source="bundled:support-intents", max_train_examples=64, max_eval_examples=32),
}
BUDGET = TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
PARAMS = {"learning_rate": 3e-3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.01,
          "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "target_modules": "attention_qv", "peft_method": "lora"}


def test_every_objective_has_test_data():
    assert sorted(DATA) == sorted(OBJECTIVES)


@pytest.fixture(scope="module", params=sorted(OBJECTIVES))
def objective(request):
    cls = get_objective(request.param)
    obj = cls(ModelConfig(name_or_path="bundled:tiny-support-lm"), DATA[request.param], BUDGET, seed=0)
    obj.setup()
    return obj


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_trial_runs_real_steps_and_reports_each_evaluation(objective):
    reports = []
    metrics = objective.run_trial(PARAMS, report=lambda step, m: reports.append((step, m)) or False)
    assert metrics["steps"] == BUDGET.max_steps
    assert [step for step, _ in reports] == [2, 4]
    from objectives._base import COST_METRICS
    from objectives._metrics import GENERATION_METRICS

    # Generation metrics are decoded only when a sweep asks for them (tests/objectives/test_metrics.py).
    for name in [*(n for n in objective.metrics if n not in GENERATION_METRICS), *COST_METRICS]:
        assert math.isfinite(metrics[name]), name
    assert not set(GENERATION_METRICS) & set(metrics)
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


def test_unknown_space_parameter_is_rejected_before_any_trial():
    cls = get_objective("causal_lm")
    with pytest.raises(ConfigError) as err:
        cls.check_params(["learning_rate", "lora_rank"], source="s.yaml")
    assert "lora_rank" in str(err.value) and "s.yaml" in str(err.value) and "lora_r" in str(err.value)
    cls.check_params(["learning_rate", "lora_alpha_ratio"], auxiliary=["lora_alpha_ratio"])


def test_unknown_metric_lists_the_objectives_metrics():
    with pytest.raises(ConfigError, match="perplexity"):
        get_objective("causal_lm").check_metric("accuracy")


def test_resuming_from_an_adapter_checkpoint_trains_only_the_remaining_steps(objective, tmp_path):
    saved = {}

    def checkpoint(step, model):
        saved[step] = objective.save_checkpoint(model, step, tmp_path / f"step-{step}", params=PARAMS)

    full = []
    objective.run_trial(PARAMS, report=lambda step, m: full.append((step, m["eval_loss"])) or False,
                        on_evaluate=checkpoint)
    files = sorted(p.name for p in saved[2].iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "ftsweep_checkpoint.json"]
    base_bytes = sum(p.numel() * p.element_size() for p in objective.base_model.parameters())
    assert (saved[2] / "adapter_model.safetensors").stat().st_size < base_bytes / 4  # the adapter, not the model

    # From the step-4 checkpoint (the end of the budget): nothing left to train, the same weights evaluate
    # to the same loss.
    reports = []
    metrics = objective.run_trial(PARAMS, report=lambda step, m: reports.append(step) or False, resume_from=saved[4])
    assert reports == [4] and metrics["steps"] == 4 and "train_loss" not in metrics
    assert metrics["eval_loss"] == pytest.approx(full[-1][1], rel=1e-5)
    # From step 2: only steps 3-4 run, and they report as steps of the whole trial.
    reports.clear()
    metrics = objective.run_trial(PARAMS, report=lambda step, m: reports.append(step) or False, resume_from=saved[2])
    assert reports == [4] and metrics["steps"] == 4 and math.isfinite(metrics["train_loss"])


def test_a_checkpoint_that_does_not_fit_the_adapter_is_refused(objective, tmp_path):
    objective.run_trial(PARAMS, on_evaluate=lambda step, model: objective.save_checkpoint(model, step, tmp_path),
                        report=lambda step, m: False)
    with pytest.raises(ValueError, match="does not fit"):
        objective.run_trial({**PARAMS, "target_modules": "all_linear"}, resume_from=tmp_path)
    objective.run_trial(PARAMS)  # the refused trial left the base model clean


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


def test_tokenized_data_is_cached_on_disk_keyed_by_tokenizer_data_and_length():
    # `datasets` fingerprints each map() by its function, closure included (tokenizer, template,
    # max_seq_length) and its input data, and keeps the result as an Arrow file: a second worker
    # (or launch) of the same sweep reads the tokenized data instead of tokenizing again.
    def tokenized_files(budget: TrainBudget, template: str | None = None):
        from objectives import ObjectiveOptions, load_splits

        cls = get_objective("causal_lm")
        options = ObjectiveOptions(prompt_template=template) if template else None
        obj = cls(ModelConfig(name_or_path="bundled:tiny-support-lm"), DATA["causal_lm"], budget, seed=0,
                  options=options)
        from transformers import AutoTokenizer

        obj.tokenizer = AutoTokenizer.from_pretrained(obj.check_sources())
        obj.tokenizer.pad_token = obj.tokenizer.pad_token or obj.tokenizer.eos_token
        train, _, _ = obj._tokenize(*load_splits(obj.data_config, seed=0, columns=obj.required_columns()))
        return {f["filename"] for f in train.cache_files}, train

    first, train = tokenized_files(BUDGET)
    again, train_again = tokenized_files(BUDGET)
    assert first and first == again and train["input_ids"] == train_again["input_ids"]
    assert tokenized_files(BUDGET.model_copy(update={"max_seq_length": 48}))[0] != first
    assert tokenized_files(BUDGET, template="Q: {prompt}\nA:")[0] != first


def test_trial_trainer_counts_the_same_flops_as_transformers(objective):
    # The trial's Trainer counts the model's parameters once instead of at every step; same FLOPs.
    from transformers import Trainer

    seen = {}

    def compare(model, trainer):
        batch = next(iter(trainer.get_train_dataloader()))
        seen["ours"], seen["stock"] = trainer.floating_point_ops(batch), Trainer.floating_point_ops(trainer, batch)
        seen["total"] = trainer.state.total_flos
        return {}

    objective.run_trial(PARAMS, after_training=compare)
    assert seen["ours"] == seen["stock"] > 0
    assert seen["total"] > 0
