"""Classification and generation metrics: the scores themselves, and both objectives reporting them
from a real short fine-tune of the bundled tiny model."""

from __future__ import annotations

import math
import sys

import pytest

from objectives import (
    DataConfig,
    ModelConfig,
    ObjectiveOptions,
    TrainBudget,
    get_objective,
)
from objectives._metrics import (
    GENERATION_METRICS,
    classification_metrics,
    generation_metrics,
    meteor_unavailable,
)
from spaces import ConfigError

BUDGET = TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
PARAMS = {"learning_rate": 3e-3, "lora_r": 4, "lora_alpha": 8, "target_modules": "attention_qv", "peft_method": "lora"}
CLASSIFICATION = ["accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro", "f1_micro"]
INSTALL = "pip install 'ftsweep[generation]'"
CausalLM = get_objective("causal_lm")


def causal_lm(metrics=None, samples: int = 4):
    obj = CausalLM(ModelConfig(name_or_path="bundled:tiny-support-lm"),
                   DataConfig(source="bundled:support-qa", max_train_examples=32, max_eval_examples=16), BUDGET,
                   seed=0, options=ObjectiveOptions(generation_samples=samples, max_new_tokens=16), metrics=metrics)
    obj.setup()
    return obj


# ---------------------------------------------------------------- the scores


@pytest.mark.parametrize(("labels", "predictions", "expected"), [
    # Class 0: P 3/4, R 1, F1 6/7. Class 1 is never predicted: P 0 (zero_division), R 0, F1 0.
    ([0, 0, 0, 1], [0, 0, 0, 0],
     {"accuracy": 0.75, "precision_macro": 0.375, "recall_macro": 0.5, "f1_macro": 3 / 7,
      "precision_micro": 0.75, "recall_micro": 0.75, "f1_micro": 0.75}),
    # Class 0: P 1, R 1. Class 1: P 0, R 0. Class 2: P 2/3, R 1, F1 0.8.
    ([0, 1, 2, 2], [0, 2, 2, 2],
     {"accuracy": 0.75, "precision_macro": 5 / 9, "recall_macro": 2 / 3, "f1_macro": 0.6,
      "precision_micro": 0.75, "recall_micro": 0.75, "f1_micro": 0.75}),
    (["a", "b"], ["a", "b"], dict.fromkeys(CLASSIFICATION, 1.0)),
])
def test_classification_metrics_by_hand(labels, predictions, expected):
    metrics = classification_metrics(labels, predictions)
    assert sorted(metrics) == sorted(CLASSIFICATION)
    assert metrics == pytest.approx(expected)
    assert all(isinstance(value, float) for value in metrics.values())


REFERENCES = ["your refund reaches the card within five business days",
              "the courier will try order W4816 again on saturday"]
ROUGE_BLEU = {"bleu", "rouge1", "rouge2", "rougeL"}


def test_identical_responses_score_perfectly():
    metrics = generation_metrics(REFERENCES, REFERENCES, ROUGE_BLEU)
    assert metrics == {"bleu": 100.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_disjoint_responses_score_zero():
    metrics = generation_metrics(["blue green yellow purple orange", "alpha beta gamma delta"], REFERENCES, ROUGE_BLEU)
    assert metrics == {"bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_partial_overlap_scores_in_between():
    partial = ["your refund reaches the bank in about five days", "the courier tries again on monday"]
    metrics = generation_metrics(partial, REFERENCES, ROUGE_BLEU)
    assert 0.0 < metrics["bleu"] < 100.0
    for name in ("rouge1", "rouge2", "rougeL"):
        assert 0.0 < metrics[name] < 1.0, name
    # Stemming: "refunds" and "refunded" count as the same word.
    stemmed = generation_metrics(["refunds arrived"], ["refunded arrives"], {"rouge1"})
    assert stemmed == {"rouge1": 1.0}


def test_only_wanted_generation_metrics_are_computed():
    assert generation_metrics(REFERENCES, REFERENCES, {"rougeL", "eval_loss", "accuracy"}) == {"rougeL": 1.0}
    assert generation_metrics(REFERENCES, REFERENCES, {"eval_loss"}) == {}
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        generation_metrics(REFERENCES, REFERENCES[:1], {"bleu"})


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # `import sacrebleu` now raises ImportError
    with pytest.raises(ImportError, match="sacrebleu") as caught:
        generation_metrics(REFERENCES, REFERENCES, {"bleu"})
    assert INSTALL in str(caught.value)
    with pytest.raises(ConfigError, match="sacrebleu") as caught:
        CausalLM.check_metric_available("bleu", source="sweep.yaml")
    assert INSTALL in str(caught.value) and "sweep.yaml" in str(caught.value) and "metric.name" in str(caught.value)
    CausalLM.check_metric_available("rougeL")  # rouge-score is still there


def test_meteor_is_refused_without_wordnet_data_or_computed_with_it():
    reason = meteor_unavailable()
    if reason is not None:  # no WordNet data here (never downloaded at run time)
        assert "WordNet" in reason and "nltk.downloader wordnet" in reason and "NLTK_DATA" in reason
        with pytest.raises(ConfigError, match="WordNet") as caught:
            CausalLM.check_metric_available("meteor", source="sweep.yaml")
        assert "sweep.yaml" in str(caught.value) and "'meteor'" in str(caught.value)
        with pytest.raises(LookupError, match="WordNet"):
            generation_metrics(REFERENCES, REFERENCES, {"meteor"})
    else:
        CausalLM.check_metric_available("meteor")
        assert generation_metrics(REFERENCES, REFERENCES, {"meteor"})["meteor"] > 0.9
        assert generation_metrics(["blue green yellow"], REFERENCES[:1], {"meteor"}) == {"meteor": 0.0}


def test_available_generation_metrics_and_the_loss_pass_the_check():
    for metric in ("eval_loss", "perplexity", "bleu", "rouge1", "rouge2", "rougeL"):
        CausalLM.check_metric_available(metric)


def test_a_metric_the_task_does_not_report_lists_the_allowed_ones():
    classifier = get_objective("sequence_classification")
    with pytest.raises(ConfigError, match="does not report") as caught:
        classifier.check_metric("bleu", source="sweep.yaml")
    assert all(name in str(caught.value) for name in CLASSIFICATION)
    assert classifier.check_metric("recall_micro") == "maximize"
    assert CausalLM.check_metric("rougeL") == "maximize"
    assert set(GENERATION_METRICS) <= set(CausalLM.metrics)
    with pytest.raises(ConfigError, match="bleu"):
        CausalLM.check_metric("f1_macro")


# ---------------------------------------------------------------- objectives report them


def test_classification_trial_reports_every_classification_metric():
    obj = get_objective("sequence_classification")(
        ModelConfig(name_or_path="bundled:tiny-support-lm"),
        DataConfig(source="bundled:support-intents", max_train_examples=32, max_eval_examples=32), BUDGET, seed=0)
    reports = []
    metrics = obj.run_trial(PARAMS, report=lambda step, m: reports.append(m) or False)
    assert len(reports) == 2
    for report in reports:
        for name in CLASSIFICATION:
            assert 0.0 <= report[name] <= 1.0, name
    assert metrics["f1_micro"] == pytest.approx(metrics["accuracy"])  # single-label: micro F1 is accuracy


def test_causal_lm_trial_reports_requested_generation_metrics_at_every_evaluation():
    obj = causal_lm(metrics=["eval_loss", "bleu", "rougeL"])
    assert len(obj.generation_sample) == 4
    assert all(prompt.startswith("Question: ") and prompt.endswith("\nAnswer:") and reference
               for prompt, reference in obj.generation_sample)
    reports = []
    metrics = obj.run_trial(PARAMS, report=lambda step, m: reports.append(m) or False)
    assert len(reports) == 2
    for result in (*reports, metrics):
        assert math.isfinite(result["bleu"]) and 0.0 <= result["bleu"] <= 100.0
        assert math.isfinite(result["rougeL"]) and 0.0 <= result["rougeL"] <= 1.0
        assert not {"rouge1", "rouge2", "meteor"} & set(result)  # only what was asked for


def test_causal_lm_decodes_nothing_when_no_generation_metric_is_requested():
    obj = causal_lm(metrics=["eval_loss"])
    assert obj.evaluation_extras(obj.base_model) == {}
    metrics = obj.run_trial(PARAMS)
    assert math.isfinite(metrics["eval_loss"])
    assert not set(GENERATION_METRICS) & set(metrics)


@pytest.fixture(scope="module")
def generating():
    return causal_lm(metrics=["rouge1"], samples=6)


@pytest.mark.parametrize("method", ["lora", "prefix_tuning", "prompt_tuning"])
def test_batched_greedy_answers_match_one_prompt_at_a_time(generating, method):
    # Left padding must not change what a trained adapter answers, prompt-learning methods included
    # (PEFT drops position ids for prompt tuning, so its prompts are batched by length instead).
    seen = {}

    def decode(model, trainer):
        model.train()
        prompts = [prompt for prompt, _ in generating.generation_sample]
        seen["batched"] = generating.generate_responses(model, prompts)
        seen["alone"] = [generating.generate_responses(model, [prompt])[0] for prompt in prompts]
        seen["training"] = all(module.training for module in model.modules())
        return {}

    metrics = generating.run_trial({"peft_method": method, "learning_rate": 1e-2}, after_training=decode)
    assert seen["batched"] == seen["alone"]
    assert len(seen["batched"]) == 6 and any(seen["batched"])
    assert not any(answer.startswith("Question:") for answer in seen["batched"])  # only the new tokens
    assert seen["training"]  # decoding put the model back in training mode
    assert 0.0 <= metrics["rouge1"] <= 1.0
