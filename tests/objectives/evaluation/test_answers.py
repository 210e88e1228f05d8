"""Answer metrics (objectives/evaluation/answers.py, causal_lm's scoring): what a normalized answer is, which choices
are inferred, and that exact_match and choice_accuracy / choice_nll of a real model are what scoring each
row alone, by hand, gives -- batched, padded, on a chat template and a plain one, at the evaluations the
sweep asked for."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import get_peft_model

from objectives import DataConfig, ModelConfig, ObjectiveOptions, TrainBudget, TrialOptions, get_objective
from objectives.evaluation.answers import (
    AnswerRow,
    choice_scores,
    choice_texts,
    exact_match_scores,
    infer_choices,
    normalize_answer,
)
from objectives.tasks.causal_lm import CausalLMTask

CausalLM = get_objective("causal_lm")
MODEL = ModelConfig(name_or_path="bundled:tiny-support-lm")
# The routing sweep's template: turns written as the bundled model was pretrained, eos ending each answer.
PRETRAINED_TURNS = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }}\n"
                    "{% elif m['role'] == 'assistant' %}Answer: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
                    "{% if add_generation_prompt %}Answer:{% endif %}")
# ChatML on a tokenizer without ChatML's tokens: the end of the turn is plain text.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BUDGET = TrainBudget(max_steps=6, eval_every=2, batch_size=8, eval_batch_size=5, max_seq_length=64)


@pytest.mark.parametrize(("text", "pattern", "expected"), [
    ("  Positive. ", None, "positive"),
    ('"Refund"!', None, "refund"),
    ("-3.", None, "-3"),
    ("New   York", None, "new york"),
    ("¿Qué?", None, "qué"),
    ("I think the answer is 42!", r"answer is (\d+)", "42"),
    ("#### 1,234", r"#### ([\d,]+)", "1,234"),
    ("The answer is yes", r"yes|no", "yes"),  # no group: the whole match
    ("nothing here", r"answer is (\d+)", None),
])
def test_normalize_answer(text, pattern, expected):
    assert normalize_answer(text, pattern) == expected


def test_choices_are_inferred_from_few_repeated_answers_and_not_from_free_text():
    answers = ["Billing", "billing.", "shipping", "Shipping", "billing", "account", "account", "shipping"]
    assert infer_choices(answers) == ("account", "billing", "shipping")  # each spelt as its answers mostly are
    assert infer_choices([f"order {i} ships Monday" for i in range(40)]) is None  # every answer different
    assert infer_choices(["yes"] * 10) is None  # one answer is not a choice
    assert infer_choices(["a", "b", "c", "d"]) is None  # too few rows to tell choices from free text
    many = [f"team{i % 12}" for i in range(120)]
    assert infer_choices(many) is None  # more than MAX_INFERRED_CHOICES
    sentences = [f"It goes to our {t} team." for t in ("billing", "returns", "billing", "returns")]
    assert infer_choices(sentences, r"our (\w+) team") == ("billing", "returns")


def test_a_choice_is_scored_in_its_references_words():
    assert choice_texts("I passed it to our billing team.", ["billing", "returns"], r"our (\w+) team") == [
        "I passed it to our billing team.", "I passed it to our returns team."]
    assert choice_texts("billing", ["billing", "returns"]) == ["billing", "returns"]


def test_per_row_scores():
    rows = [AnswerRow(0, (1,), "Yes", "yes"), AnswerRow(1, (1,), "No", "no"), AnswerRow(2, (1,), "The answer is no", "no")]
    assert exact_match_scores(rows, ["yes!", "NO", "maybe"], None) == [1.0, 1.0, 0.0]
    scores = choice_scores([[0.0, -1.0], [-2.0, -1.0], [-1.0, -1.0]], [0, 0, None])
    assert scores["choice_accuracy"][:2] == [1.0, 0.0] and math.isnan(scores["choice_accuracy"][2])
    assert scores["choice_nll"][0] == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    assert scores["choice_nll"][1] == pytest.approx(-math.log(math.exp(-2) / (math.exp(-2) + math.exp(-1))))


# ---------------------------------------------------------------- on a real model


def _routing_file(tmp_path, n: int = 60):
    """Chat rows whose answer is one word of a sentence (the bundled routing data's shape, smaller)."""
    teams = ["billing", "shipping", "returns"]
    rows = [{"messages": [{"role": "user", "content": f"Where is my order {1000 + i}? It was item {i % 7}."},
                          {"role": "assistant", "content": f"I have passed your message to our {teams[i % 3]} team."}]}
            for i in range(n)]
    path = tmp_path / "routing.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _objective(tmp_path, template=PRETRAINED_TURNS, metrics=("choice_accuracy", "choice_nll", "exact_match"), **args):
    options = ObjectiveOptions(chat_template=template, answer_pattern=r"our (\w+) team", max_new_tokens=16, **args)
    objective = CausalLM(MODEL, DataConfig(source=str(_routing_file(tmp_path)), max_eval_examples=20, test_fraction=0.2),
                         BUDGET, options=options, metrics=metrics)
    objective.setup()
    return objective


def _loglik_alone(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context), one sequence, no padding: the definition, computed apart."""
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation])).logits[0].double().log_softmax(-1)
    return sum(float(logits[len(context) - 1 + k, token]) for k, token in enumerate(continuation))


@pytest.mark.parametrize("template", [PRETRAINED_TURNS, CHATML])
def test_choice_metrics_are_each_rows_choices_scored_alone(tmp_path, template):
    objective = _objective(tmp_path, template)
    state = objective.tokenized_data.state
    assert state.choices == ("billing", "returns", "shipping")  # inferred from the answers
    rows = state.answer_rows
    tokenizer = objective.tokenizer
    assert len(rows) == len(objective.eval_dataset)
    for row in rows:  # the choices' answers are encoded exactly as training encodes the reference
        assert row.choice_ids[row.correct] == row.reference_ids
        decoded = tokenizer.decode(list(row.prompt_ids) + list(row.reference_ids))
        assert row.reference in decoded and decoded.index(row.reference) > 0
    model = get_peft_model(objective.base_model, objective.peft_config({"lora_r": 4}))
    torch.manual_seed(0)
    for p in model.parameters():  # an adapter that changes the answers (a fresh LoRA adapter is the identity)
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    try:
        scores = objective.task.answer_scores(model, tokenizer, rows, {"choice_accuracy", "choice_nll"})
        by_hand_accuracy, by_hand_nll = [], []
        model.eval()
        for row in rows:
            logliks = [_loglik_alone(model, list(row.prompt_ids), list(ids)) for ids in row.choice_ids]
            by_hand_accuracy.append(float(max(range(len(logliks)), key=logliks.__getitem__) == row.correct))
            total = math.log(sum(math.exp(v) for v in logliks))
            by_hand_nll.append(total - logliks[row.correct])
        assert scores.per_example["choice_accuracy"] == by_hand_accuracy
        assert scores.per_example["choice_nll"] == pytest.approx(by_hand_nll, abs=1e-3)
        assert scores.metrics["choice_accuracy"] == pytest.approx(sum(by_hand_accuracy) / len(rows))
        assert scores.rows == [row.index for row in rows]
    finally:
        model.unload()


@pytest.mark.parametrize("template", [PRETRAINED_TURNS, CHATML])
def test_exact_match_decodes_each_answer_to_the_end_of_its_turn(tmp_path, template):
    objective = _objective(tmp_path, template)
    task, tokenizer, rows = objective.task, objective.tokenizer, objective.tokenized_data.state.answer_rows
    stop_ids, stop_strings = task.end_of_turn(tokenizer, rows[0])
    assert tokenizer.eos_token_id in stop_ids
    assert stop_strings == ([] if template is PRETRAINED_TURNS else ["<|im_end|>"])
    # Trained a little, so the answers are sentences that end; decoded batched (left padding) and alone.
    trained = {}

    def after(model, trainer):
        batched = task._generate(model, tokenizer, [list(r.prompt_ids) for r in rows], stop_ids=stop_ids,
                                 stop_strings=stop_strings)
        alone = [task._generate(model, tokenizer, [list(r.prompt_ids)], stop_ids=stop_ids, stop_strings=stop_strings)[0]
                 for r in rows]
        trained.update(batched=batched, alone=alone,
                       scores=task.answer_scores(model, tokenizer, rows, {"exact_match"}))
        return {}

    objective.run_trial({"learning_rate": 0.05, "lora_r": 8, "lora_alpha": 16}, options=TrialOptions(after_training=after))
    assert trained["batched"] == trained["alone"]
    assert not any("<|im_end|>" in answer or "</s>" in answer for answer in trained["batched"])
    expected = [float(normalize_answer(a, r"our (\w+) team") == row.answer) for a, row in zip(trained["batched"], rows)]
    assert trained["scores"].per_example["exact_match"] == expected


def test_task_metrics_every_k_evaluations_and_always_at_the_end(tmp_path):
    objective = _objective(tmp_path, metrics=("choice_accuracy",), task_metrics_every=2)
    reports = []
    final = objective.run_trial({"learning_rate": 0.01, "lora_r": 4},
                                report=lambda step, metrics: reports.append((step, metrics)) or False)
    assert [(step, "choice_accuracy" in m) for step, m in reports] == [(2, False), (4, True), (6, True)]
    # What scoring the answers cost, where it ran.
    assert [(step, m.get("task_metrics_s", 0) > 0) for step, m in reports] == [(2, False), (4, True), (6, True)]
    assert final["choice_accuracy"] == reports[-1][1]["choice_accuracy"]
    assert all("eval_loss" in m for _, m in reports)


def test_an_early_stopped_trial_still_ends_with_its_task_metrics(tmp_path):
    objective = CausalLM(MODEL, DataConfig(source=str(_routing_file(tmp_path)), max_eval_examples=20),
                         BUDGET.model_copy(update={"max_steps": 12, "early_stopping_patience": 1,
                                                   "early_stopping_threshold": 100.0}),
                         options=ObjectiveOptions(chat_template=PRETRAINED_TURNS, answer_pattern=r"our (\w+) team",
                                                  task_metrics_every=5),
                         metrics=["eval_loss", "choice_accuracy"], target=("eval_loss", "minimize"))
    # No evaluation improves the loss by 100: stopped after its second (step 4), before the task metrics' step 10.
    final = objective.run_trial({"learning_rate": 0.01, "lora_r": 4})
    assert final["steps"] == 4 and final["stopped_early_at"] == 4
    assert 0.0 <= final["choice_accuracy"] <= 1.0


def test_the_test_split_is_scored_whole_by_the_final_fit(tmp_path):
    objective = _objective(tmp_path, metrics=("choice_accuracy", "exact_match"), eval_samples=5)
    assert len(objective.tokenized_data.state.answer_rows) == 5  # validation: the sampled rows
    metrics = objective.fit({"learning_rate": 0.05, "lora_r": 4}, tmp_path / "fit")
    assert 0.0 <= metrics["test_choice_accuracy"] <= 1.0 and 0.0 <= metrics["test_exact_match"] <= 1.0
    assert 0.0 <= metrics["choice_accuracy"] <= 1.0


def test_eval_samples_are_the_same_rows_for_every_tokenizer_and_seeded(tmp_path):
    first = _objective(tmp_path, eval_samples=3)
    again = _objective(tmp_path, eval_samples=3)
    rows = [r.index for r in first.tokenized_data.state.answer_rows]
    assert rows == [r.index for r in again.tokenized_data.state.answer_rows] and len(rows) == 3
    other_seed = CausalLMTask(first.data_config, options=first.options, budget=BUDGET, seed=1)
    assert [r.index for r in other_seed.answer_rows(first.tokenizer, first.worker.splits.validation, sample=3)] != rows
