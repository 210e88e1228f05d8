"""Scores beyond the loss (objectives/evaluation/metrics.py): classification and generation metrics, perplexity and
uncertainty, and which of them a task can compute here. The tasks reporting them from real trials:
tests/objectives/tasks/."""

from __future__ import annotations

import math
import sys

import pytest

from objectives import get_objective
from objectives.evaluation.metrics import (
    GENERATION_METRICS,
    classification_metrics,
    generation_metrics,
    meteor_unavailable,
    perplexity,
    uncertainty,
)
from spaces import ConfigError

CLASSIFICATION = ["accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro", "f1_micro"]
INSTALL = "pip install 'ftsweep[generation]'"
CausalLM = get_objective("causal_lm")


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
    # BLEU and ROUGE are available wherever their packages import (ftsweep[generation], a test dependency):
    # shown by computing them here, not assumed. The loss and perplexity need no package at all.
    assert set(generation_metrics(REFERENCES, REFERENCES, ROUGE_BLEU)) == ROUGE_BLEU
    for metric in ("eval_loss", "perplexity", *sorted(ROUGE_BLEU)):
        try:
            CausalLM.check_metric_available(metric, source="sweep.yaml")
        except ConfigError as refused:
            pytest.fail(f"{metric} can be computed here, yet the check refused it: {refused}")


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


def test_perplexity_and_uncertainty():
    import torch

    assert perplexity(math.log(4.0)) == pytest.approx(4.0) and perplexity(60.0) == math.inf
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    assert uncertainty(probs, "entropy").tolist() == pytest.approx([-sum(p * math.log(p) for p in (0.7, 0.2, 0.1)),
                                                                   math.log(3)])
    assert uncertainty(probs, "margin").tolist() == pytest.approx([0.5, 1.0])
    assert uncertainty(probs, "least_confidence").tolist() == pytest.approx([0.3, 2 / 3])
    with pytest.raises(ConfigError, match="unknown uncertainty strategy"):
        uncertainty(probs, "variance")
