"""Scores beyond the loss: perplexity, classification metrics, generation metrics of decoded responses,
and the uncertainty of a predicted distribution (what `ftsweep select` ranks rows by).

Classification metrics use scikit-learn (a core dependency). Generation metrics need the optional
`generation` extra (`pip install 'ftsweep[generation]'`: sacrebleu, rouge-score, nltk), imported only
when a metric asks for it; METEOR also needs NLTK's WordNet data, which is never downloaded at run
time (trials often run where there is no internet): `meteor_unavailable()` says when it is missing.

Example:
    >>> classification_metrics([0, 0, 1, 1], [0, 1, 1, 1])["accuracy"]
    0.75
    >>> generation_metrics(["the refund takes five days"], ["the refund takes five days"], {"rouge1"})
    {'rouge1': 1.0}
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterable, Sequence

from spaces import ConfigError

# Name -> (the module that computes it, its pip package). The causal_lm task reports exactly
# these, all higher-is-better.
GENERATION_METRICS: dict[str, tuple[str, str]] = {
    "bleu": ("sacrebleu", "sacrebleu"),
    "rouge1": ("rouge_score.rouge_scorer", "rouge-score"),
    "rouge2": ("rouge_score.rouge_scorer", "rouge-score"),
    "rougeL": ("rouge_score.rouge_scorer", "rouge-score"),
    "meteor": ("nltk.translate.meteor_score", "nltk"),
}
INSTALL = "pip install 'ftsweep[generation]'"
_WORDNET_FIX = (
    "run `python -m nltk.downloader wordnet omw-1.4` on a machine with internet, "
    "or set NLTK_DATA to a folder holding it"
)
# METEOR takes pre-tokenized text; NLTK's own word_tokenize would need its punkt data as well.
_WORDS = re.compile(r"\w+|[^\w\s]")
UNCERTAINTY_STRATEGIES = ("entropy", "margin", "least_confidence")


def perplexity(loss: float) -> float:
    """exp(loss), as inf once it would overflow a float (a loss past ~700; 50 is already meaningless).

    Example:
        >>> perplexity(0.0), perplexity(1e4)
        (1.0, inf)
    """
    return math.exp(loss) if loss < 50 else float("inf")


def uncertainty(probs, strategy: str):
    """The uncertainty of each distribution in `probs` (a tensor [..., classes]) under `strategy`.

    entropy: -sum_i p_i log p_i (nats); margin: 1 - (p_1 - p_2), the two largest probabilities;
    least_confidence: 1 - p_1.

    Example:
        >>> import torch
        >>> round(float(uncertainty(torch.tensor([0.5, 0.5]), "margin")), 3)
        1.0
        >>> round(float(uncertainty(torch.tensor([0.9, 0.1]), "least_confidence")), 3)
        0.1
    """
    import torch

    if strategy == "entropy":
        return torch.special.entr(probs).sum(-1)
    if strategy == "margin":
        top = probs.topk(2, dim=-1).values
        return 1 - (top[..., 0] - top[..., 1])
    if strategy == "least_confidence":
        return 1 - probs.max(-1).values
    raise ConfigError("unknown uncertainty strategy", key="--strategy", value=strategy, allowed=UNCERTAINTY_STRATEGIES)


def classification_metrics(labels: Iterable[int], predictions: Iterable[int]) -> dict[str, float]:
    """Accuracy, and precision / recall / F1 averaged over classes (macro) and over examples (micro).

    Macro weighs every class alike, so a rare class done badly drags it down; micro counts every
    example alike, and for single-label classes micro precision = recall = F1 = accuracy. Classes
    seen in neither list do not count; a class never predicted scores 0 precision (no warning).

    Example:
        >>> m = classification_metrics([0, 0, 0, 1], [0, 0, 0, 0])
        >>> m["f1_micro"], round(m["f1_macro"], 4)
        (0.75, 0.4286)
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels, predictions = list(labels), list(predictions)
    metrics = {"accuracy": float(accuracy_score(labels, predictions))}
    for average in ("macro", "micro"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, average=average, zero_division=0
        )
        metrics.update({f"precision_{average}": float(precision), f"recall_{average}": float(recall),
                        f"f1_{average}": float(f1)})
    return metrics


def generation_metrics(predictions: Sequence[str], references: Sequence[str], wanted: Iterable[str]) -> dict[str, float]:
    """The generation metrics in `wanted` for responses against one reference each.

    `bleu`: sacrebleu corpus BLEU (0-100; 0 when no response shares a 4-gram with its reference,
    as with very short answers). `rouge1`, `rouge2`, `rougeL`: mean ROUGE F-measure with Porter
    stemming (0-1). `meteor`: mean NLTK METEOR of word/punctuation tokens (0-1; needs WordNet data,
    else LookupError). Names in `wanted` that are not generation metrics (e.g. eval_loss) are
    ignored, so a task can pass every metric it was asked for. A missing package raises
    ImportError saying how to install it.

    Example:
        >>> generation_metrics(["a cat sat on the mat"], ["a cat sat on the mat"], {"bleu", "eval_loss"})
        {'bleu': 100.0}
    """
    wanted = [name for name in GENERATION_METRICS if name in set(wanted)]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not wanted:
        return {}
    if not predictions:
        raise ValueError("generation metrics need at least one prediction")
    metrics: dict[str, float] = {}
    if "bleu" in wanted:
        sacrebleu = _require("bleu")
        score = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
        metrics["bleu"] = min(float(score), 100.0)  # a perfect match computes as 100.00000000000004
    rouge_types = [name for name in wanted if name.startswith("rouge")]
    if rouge_types:
        rouge_scorer = _require(rouge_types[0])
        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=True)
        scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
        for name in rouge_types:
            metrics[name] = sum(score[name].fmeasure for score in scores) / len(scores)
    if "meteor" in wanted:
        meteor = _require("meteor")
        problem = meteor_unavailable()
        if problem is not None:
            raise LookupError(problem)  # what NLTK itself raises for missing data, with our remedy
        metrics["meteor"] = sum(
            meteor.meteor_score([_WORDS.findall(reference)], _WORDS.findall(prediction))
            for prediction, reference in zip(predictions, references)
        ) / len(predictions)
    return {name: metrics[name] for name in wanted}


def generation_metric_problem(metric: str) -> tuple[str, str] | None:
    """Why `metric` cannot be computed on this machine, and how to fix it; None when it can (or
    when it is not a generation metric). Nothing is downloaded.

    Example:
        >>> generation_metric_problem("eval_loss") is None
        True
    """
    if metric not in GENERATION_METRICS:
        return None
    module, package = GENERATION_METRICS[metric]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"the {metric} metric needs the {package} package, which is not installed here ({exc})", INSTALL
    if metric == "meteor":
        import nltk

        try:
            nltk.data.find("corpora/wordnet")  # also finds corpora/wordnet.zip; never downloads
        except LookupError:
            return "METEOR needs NLTK's WordNet data, which is not installed here", _WORDNET_FIX
    return None


def meteor_unavailable() -> str | None:
    """None when METEOR can be computed here (nltk and its WordNet data are installed), otherwise
    a sentence saying why and what to do.

    Example:
        >>> reason = meteor_unavailable()  # e.g. "METEOR needs NLTK's WordNet data, which is not installed here: ..."
        >>> reason is None or "nltk" in reason.lower()
        True
    """
    problem = generation_metric_problem("meteor")
    return None if problem is None else f"{problem[0]}: {problem[1]}"


def _require(metric: str):
    """The module that computes `metric`, or an ImportError that says how to install it."""
    try:
        return importlib.import_module(GENERATION_METRICS[metric][0])
    except ImportError as exc:
        why, fix = generation_metric_problem(metric)
        raise ImportError(f"{why}: {fix}") from exc
