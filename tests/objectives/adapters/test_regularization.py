"""Regularization inside a trial: base-model dropouts, label smoothing, early stopping within a trial
and the train-validation gap, on real fine-tunes of the bundled tiny models."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import TINY_SWEEP, deep_merge
from objectives import DataConfig, ModelConfig, TrainBudget, TrialOptions, get_objective
from objectives.adapters.regularization import apply_dropouts, dropout_sites, exposed_dropouts
from search.cli import main
from search.sweep import load_sweep
from spaces import ConfigError

DATA = DataConfig(source="bundled:support-qa", max_train_examples=64, max_eval_examples=16)
BUDGET = TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
LORA = {"learning_rate": 3e-3, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}


def _objective(model: str, budget: TrainBudget = BUDGET, **kwargs):
    objective = get_objective("causal_lm")(ModelConfig(name_or_path=model), DATA, budget, seed=0, **kwargs)
    objective.setup()
    return objective


@pytest.fixture(scope="module")
def gpt2():
    return _objective("bundled:tiny-support-gpt2")


@pytest.fixture(scope="module")
def llama():
    return _objective("bundled:tiny-support-lm")


def _dropout_values(model) -> dict[str, list[float]]:
    return {name: [float(getattr(m, attr)) for m, attr in where] for name, where in dropout_sites(model).items()}


def test_each_architecture_exposes_the_dropouts_it_has(gpt2, llama):
    assert exposed_dropouts(llama.base_model) == {"attention_dropout"}  # Llama reads config.attention_dropout only
    assert exposed_dropouts(gpt2.base_model) == {"attention_dropout", "hidden_dropout"}
    gpt2_modules = {name for name, m in gpt2.base_model.named_modules() if isinstance(m, torch.nn.Dropout)}
    # GPT-2: embeddings, per layer attn_dropout, resid_dropout (attention output) and mlp.dropout.
    assert len(gpt2_modules) == 1 + 2 * 3
    attention = [m for m, _ in dropout_sites(gpt2.base_model)["attention_dropout"]]
    assert {id(gpt2.base_model.get_submodule(f"transformer.h.{i}.attn.attn_dropout")) for i in range(2)} == \
        {id(m) for m in attention}


def test_trial_dropouts_train_with_the_trial_and_are_put_back(gpt2):
    before = _dropout_values(gpt2.base_model)
    seen = []
    gpt2.run_trial({**LORA, "hidden_dropout": 0.35, "attention_dropout": 0.2}, lambda step, m: False,
                   TrialOptions(on_evaluate=lambda step, model: seen.append(_dropout_values(model))))
    assert seen and all(set(v["hidden_dropout"]) == {0.35} and set(v["attention_dropout"]) == {0.2} for v in seen)
    assert _dropout_values(gpt2.base_model) == before == {"attention_dropout": [0.1, 0.1],
                                                          "hidden_dropout": [0.1] * 5}


def test_dropout_changes_training(gpt2):
    quiet = gpt2.run_trial({**LORA, "hidden_dropout": 0.0, "attention_dropout": 0.0})
    noisy = gpt2.run_trial({**LORA, "hidden_dropout": 0.5, "attention_dropout": 0.5})
    assert quiet["train_loss"] != noisy["train_loss"]


def test_a_dropout_the_model_lacks_is_refused_before_anything_changes(llama):
    before = _dropout_values(llama.base_model)
    with pytest.raises(ValueError, match="no hidden dropout"):
        apply_dropouts(llama.base_model, {"attention_dropout": 0.3, "hidden_dropout": 0.1})
    assert _dropout_values(llama.base_model) == before


def test_label_smoothing_reaches_the_loss(llama):
    plain = llama.run_trial(LORA)
    smoothed = llama.run_trial({**LORA, "label_smoothing_factor": 0.2})
    # Smoothing spreads 20% of each target over the vocabulary: the loss of the same weights is higher.
    assert smoothed["train_loss"] > plain["train_loss"] + 0.05


def test_train_eval_gap_is_eval_loss_minus_the_training_loss_since_the_last_evaluation():
    objective = _objective("bundled:tiny-support-lm", TrainBudget(max_steps=8, eval_every=4, batch_size=4,
                                                                  eval_batch_size=16, max_seq_length=64))
    logs: list[tuple[int, float]] = []
    reports: list[tuple[int, dict]] = []
    objective.run_trial(LORA, lambda step, m: reports.append((step, m)) or False,
                        TrialOptions(on_log=lambda step, m: logs.append((step, m["train_loss"]))))
    assert [step for step, _ in reports] == [4, 8]
    previous = 0
    for step, metrics in reports:
        window = [loss for s, loss in logs if previous < s <= step]
        assert window, "training losses are logged between evaluations"
        assert metrics["interval_train_loss"] == pytest.approx(sum(window) / len(window))
        assert metrics["train_eval_gap"] == pytest.approx(metrics["eval_loss"] - sum(window) / len(window))
        previous = step


def test_early_stopping_ends_a_trial_that_stops_improving():
    # threshold 100: no evaluation can improve enough, so patience 1 stops at the second evaluation.
    budget = TrainBudget(max_steps=8, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64,
                         early_stopping_patience=1, early_stopping_threshold=100.0)
    objective = _objective("bundled:tiny-support-lm", budget)
    metrics = objective.run_trial(LORA)
    assert metrics["steps"] == 4 and metrics["stopped_early_at"] == 4
    patient = _objective("bundled:tiny-support-lm", budget.model_copy(update={"early_stopping_threshold": 0.0}))
    full = patient.run_trial({**LORA, "learning_rate": 1e-3})  # a small LR keeps improving: never stops
    assert full["steps"] == 8 and "stopped_early_at" not in full


def test_early_stopping_watches_the_sweeps_metric_in_its_direction():
    budget = TrainBudget(max_steps=8, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64,
                         early_stopping_patience=1)
    objective = _objective("bundled:tiny-support-lm", budget, target=("perplexity", "maximize"))
    args = objective.training_arguments(LORA, "unused")
    assert args.metric_for_best_model == "perplexity" and args.greater_is_better is True
    # Training lowers perplexity, so maximizing it stops after the first evaluation that does so.
    metrics = objective.run_trial(LORA)
    assert metrics["stopped_early_at"] < 8


def test_a_sweep_records_the_gap_and_early_stops_and_show_prints_them(tmp_path, capsys):
    data = deep_merge(TINY_SWEEP, {
        "output_dir": str(tmp_path / "runs"), "n_trials": 2, "model": "bundled:tiny-support-gpt2",
        "space": {"params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                             "hidden_dropout": {"type": "float", "low": 0.0, "high": 0.3},
                             "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                             "max_grad_norm": {"type": "categorical", "choices": [0.5, 1.0]}}},
        "budget": {"max_steps": 6, "eval_every": 2, "early_stopping_patience": 1, "early_stopping_threshold": 100.0},
    })
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["launch", str(path)]) == 0
    capsys.readouterr()
    assert main(["show", str(path), "0", "--json"]) == 0
    import json

    details = json.loads(capsys.readouterr().out)
    assert details["state"] == "complete"
    assert details["metrics"]["stopped_early_at"] == 4
    assert all(math.isfinite(h["train_eval_gap"]) for h in details["eval_history"])
    assert main(["show", str(path), "0"]) == 0
    assert "train_eval_gap" in capsys.readouterr().out


def test_hidden_dropout_on_a_llama_is_refused_at_launch(write_sweep):
    path = write_sweep(space={"params": {"learning_rate": {"type": "fixed", "value": 1e-3},
                                         "hidden_dropout": {"type": "float", "low": 0.0, "high": 0.2}}})
    sweep = load_sweep(path)
    with pytest.raises(ConfigError) as error:
        sweep.make_objective().check_space(sweep.space)
    assert error.value.key == "space.params.hidden_dropout"
    assert "llama model exposes no hidden dropout" in str(error.value)


def test_early_stopping_settings_are_validated(write_sweep):
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        load_sweep(write_sweep(budget={"early_stopping_patience": 0}))
