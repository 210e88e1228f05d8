"""What every registered task (objectives/tasks) must do, run for each one in the registry: a new task
gets this whole suite by registering (and adding its test data to tests/objectives/task_examples.py).

Each check uses the task's own interface on the bundled tiny model: columns, tokenization, collator,
model and skeleton, metrics for each split, a short trial through the engine, evaluation, the data
checks' profile and select's uncertainty scores.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch

from objectives import TASKS, get_objective, load_splits, resolve_model_path
from objectives.adapters.peft_methods import AdapterTarget, build_config
from objectives.engine.trial import adapter_on
from objectives.evaluation.metrics import UNCERTAINTY_STRATEGIES
from objectives.tasks import DataProfile, Scored, Task, Tokenized
from tests.objectives.task_examples import BUDGET, MODEL, TASK_DATA

NAMES = TASKS.names()
PARAMS = {"learning_rate": 3e-3, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}


def test_every_task_has_test_data():
    assert sorted(TASK_DATA) == sorted(NAMES)


@pytest.fixture(scope="module", params=NAMES)
def objective(request):
    obj = get_objective(request.param)(MODEL, TASK_DATA[request.param], BUDGET.model_copy(update={"max_steps": 2}),
                                       seed=0)
    obj.setup()
    return obj


@pytest.fixture(scope="module")
def raw(objective):
    """A few raw rows of each split, as the task reads them."""
    splits = load_splits(objective.data_config, seed=0, columns=objective.task.required_columns())
    return [split.select(range(min(8, len(split)))) if split is not None else None for split in splits]


@pytest.mark.parametrize("name", NAMES)
def test_class_level_facts(name):
    task = TASKS.get(name)
    assert issubclass(task, Task) and task.name == name
    assert task.metrics["eval_loss"] == "minimize"
    assert task.metrics and set(task.metrics.values()) <= {"minimize", "maximize"}
    assert set(task.metrics) <= set(task.available_metrics())
    assert set(task.available_metrics().values()) <= {"minimize", "maximize"}
    from peft import TaskType

    assert task.peft_task_type in {t.value for t in TaskType}
    assert task.prediction_field.startswith("predicted_")
    assert all(isinstance(what, str) for what in task.accepted_params().values())
    for metric in task.metrics:
        try:
            task.check_metric_available(metric, data=TASK_DATA[name])
        except Exception as exc:  # only a ConfigError saying what is missing on this machine
            assert type(exc).__name__ == "ConfigError", exc


@pytest.mark.parametrize("name", NAMES)
def test_columns_are_consistent(name):
    task = TASKS.get(name)(TASK_DATA[name])
    required = task.required_columns()
    assert required and len(required) == len(set(required))
    assert task.input_columns() and set(task.input_columns()) <= set(task.text_columns()) <= set(required)
    profile = task.data_profile()
    assert isinstance(profile, DataProfile) and profile.columns == required
    assert profile.input_column in required and set(profile.text_columns) <= set(required)
    assert profile.label_column in (None, *required) and profile.response_column in (None, *required)


def test_tokenizes_a_small_split(objective, raw):
    tokenized = objective.task.tokenize(objective.tokenizer, *raw)
    assert isinstance(tokenized, Tokenized)
    for split in (tokenized.train, tokenized.validation, tokenized.test):
        assert len(split) > 0 and {"input_ids", "labels"} <= set(split.column_names)
        assert max(len(ids) for ids in split["input_ids"]) <= BUDGET.max_seq_length
    assert tokenized.state is not None
    lengths = objective.task.token_lengths(objective.tokenizer, raw[0])
    assert len(lengths) == len(raw[0]) and all(total >= prompt >= 0 for total, prompt in lengths)


def test_collator_batches_rows_of_different_lengths(objective):
    rows = [objective.train_dataset[i] for i in range(3)]
    batch = objective.collator()(rows)
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape == batch["attention_mask"].shape
    assert "labels" in batch


def test_model_loads_from_the_bundled_model_and_as_an_empty_skeleton(objective):
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    path = resolve_model_path(MODEL)
    state = objective.tokenized_data.state
    model = objective.task.load_model(path, state=state)
    assert sum(p.numel() for p in model.parameters()) > 0
    with init_empty_weights():
        skeleton = objective.task.skeleton_model(AutoConfig.from_pretrained(path), state)
    assert type(skeleton) is type(model) and next(skeleton.parameters()).device.type == "meta"
    # PEFT accepts the task's own task type on it.
    target = AdapterTarget(objective.task.peft_task_type, model.config.model_type, path,
                           prefix_in_kwargs=objective.task.prefix_in_kwargs)
    assert build_config(PARAMS, target).task_type == objective.task.peft_task_type


def _one_hot_at(labels: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Logits shaped like `like` whose top score on the last axis is at `labels`: predictions of exactly those."""
    logits = np.zeros_like(like)
    np.put_along_axis(logits, labels[..., None], 1.0, axis=-1)
    return logits


def test_compute_metrics_scores_real_predictions_and_perfect_and_all_wrong_ones(objective):
    from transformers import EvalPrediction, PrinterCallback, Trainer

    task, state = objective.task, objective.tokenized_data.state
    # Metrics Trainer can only report through compute_metrics: not the loss (nor perplexity, derived from it),
    # and not the periodic ones computed beside Trainer's evaluation (evaluation_extras).
    needs_compute = set(task.metrics) - {"eval_loss", "perplexity"} - task.periodic_metrics
    for split, dataset in (("validation", objective.eval_dataset), ("test", objective.test_dataset)):
        compute = task.compute_metrics(state, split)
        if compute is None:
            assert not needs_compute, f"{task.name} lists {sorted(needs_compute)} but computes none of them"
            continue
        # The tiny model's own logits on the split, as Trainer hands them to compute_metrics during a trial.
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(model=objective.base_model, args=objective.training_arguments({}, tmp),
                              eval_dataset=dataset, data_collator=objective.collator())
            trainer.remove_callback(PrinterCallback)
            predicted = trainer.predict(dataset)
        labels, logits = np.asarray(predicted.label_ids), np.asarray(predicted.predictions)
        assert len(labels) == len(dataset)
        real = compute(EvalPrediction(predictions=logits, label_ids=labels))
        assert needs_compute <= set(real) <= set(task.available_metrics())
        if "accuracy" in real:  # the share of rows whose top logit is the label, counted here
            assert real["accuracy"] == pytest.approx(float(np.mean(logits.argmax(axis=-1) == labels)))

        # The same labels, predicted exactly and predicted wrong everywhere (the next class, wrapping round).
        classes = logits.shape[-1]
        perfect = compute(EvalPrediction(predictions=_one_hot_at(labels, logits), label_ids=labels))
        all_wrong = compute(EvalPrediction(predictions=_one_hot_at((labels + 1) % classes, logits), label_ids=labels))
        for metric in needs_compute:  # every one of them is a 0..1 score of agreement with the labels
            assert task.metrics[metric] == "maximize"
            assert perfect[metric] == pytest.approx(1.0), (split, metric)
            assert all_wrong[metric] == pytest.approx(0.0), (split, metric)


def test_a_two_step_trial_reports_the_tasks_metrics(objective):
    reports = []
    metrics = objective.run_trial(PARAMS, report=lambda step, m: reports.append(step) or False)
    assert reports == [2] and metrics["steps"] == 2
    cheap = [m for m in objective.metrics if m != "eval_loss" and m in metrics]
    assert math.isfinite(metrics["eval_loss"]) and all(math.isfinite(metrics[m]) for m in cheap)
    assert set(metrics) >= {"eval_loss", "trainable_params", "latency_ms"}


def test_evaluate_scores_a_peft_model_on_the_test_split(objective):
    with adapter_on(objective.base_model, objective.peft_config(PARAMS), PARAMS) as model:
        metrics = objective.evaluate(model, objective.test_dataset, split="test")
    assert math.isfinite(metrics["eval_loss"]) and metrics["latency_ms"] > 0
    assert set(metrics) <= set(objective.available_metrics()) | {"perplexity"}


@pytest.mark.parametrize("strategy", UNCERTAINTY_STRATEGIES)
def test_uncertainty_scoring_gives_each_row_a_score_and_a_prediction(objective, raw, strategy):
    rows = [dict(row) for row in raw[2].select(range(3))]
    model = objective.base_model
    with torch.no_grad():
        scored = objective.task.score_uncertainty(model, objective.tokenizer, objective.tokenized_data.state, rows,
                                                  strategy=strategy, batch_size=2, max_new_tokens=4)
    assert len(scored) == len(rows) and all(isinstance(s, Scored) for s in scored)
    assert all(math.isfinite(s.uncertainty) and s.uncertainty >= 0 and isinstance(s.prediction, str) for s in scored)


def test_generation_evaluation_returns_only_what_it_was_asked_for(objective, raw):
    assert objective.task.evaluate_generation(objective.base_model, objective.tokenizer, raw[2], []) == {}
    assert objective.task.evaluation_extras(objective.base_model, objective.tokenizer,
                                            objective.tokenized_data.state, set()) == {}
