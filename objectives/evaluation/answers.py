"""Answer metrics: did the model give the right answer, not only the right format?

A short fine-tune's eval_loss is dominated by the template and end-of-turn tokens, so the loss-best
trial may answer one class to everything. These metrics grade the answer itself, as users grade a
classifier or a QA model:

- `exact_match`: the greedy answer (stopping at the end of the turn) equals the reference after
  `normalize_answer` (case, surrounding whitespace and punctuation; `objective.args.answer_pattern`
  extracts the answer from both first). 0-1.
- `choice_accuracy`: every choice is scored by its log-likelihood after the prompt and the best one
  taken, as lm-evaluation-harness does for multiple choice: no decoding, one batched forward pass,
  deterministic. 0-1.
- `choice_nll`: the mean over rows of -log p(reference | choices), p being the softmax of the choices'
  log-likelihoods: the cross-entropy of the model's choice, smooth where accuracy moves in steps.

The choices come from `objective.args.choices`, or are inferred when the answers take at most
`MAX_INFERRED_CHOICES` distinct values (`infer_choices`). With an answer pattern, a choice is scored
in its reference's words: "The answer is positive." -> "The answer is negative." (`choice_texts`).

Example:
    >>> normalize_answer("  Positive. ")
    'positive'
    >>> normalize_answer("I think the answer is 42!", r"answer is (\\d+)")
    '42'
    >>> infer_choices(["yes", "No", "yes.", "no", "Yes", "no", "yes", "no"])
    ('no', 'yes')
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..settings import Direction

ANSWER_METRICS: dict[str, Direction] = {
    "exact_match": "maximize",
    "choice_accuracy": "maximize",
    "choice_nll": "minimize",
}
CHOICE_METRICS = ("choice_accuracy", "choice_nll")
# More distinct answers than this and the answers are free text: choices must then be given.
MAX_INFERRED_CHOICES = 10


def normalize_answer(text: str, pattern: str | None = None) -> str | None:
    """The answer in `text`, compared case-blind: what `pattern` extracts (its group, else the match),
    without surrounding whitespace and punctuation (a minus sign before a digit stays), inner spaces
    collapsed. None when `pattern` does not match.

    Example:
        >>> normalize_answer('"Refund"'), normalize_answer("-3."), normalize_answer("no match", r"(\\d+)")
        ('refund', '-3', None)
    """
    answer = extract_answer(text, pattern)
    return None if answer is None else answer.casefold()


def extract_answer(text: str, pattern: str | None = None) -> str | None:
    """`normalize_answer` keeping the answer's case: how a choice inferred from the answers is spelt."""
    if pattern is not None:
        found = re.search(pattern, text)
        if found is None:
            return None
        text = found.group(1) if found.re.groups else found.group(0)
    text = " ".join(text.split())
    start, end = 0, len(text)
    while start < end and _punctuation(text[start]) and not (text[start] == "-" and text[start + 1:start + 2].isdigit()):
        start += 1
    while end > start and _punctuation(text[end - 1]):
        end -= 1
    return text[start:end].strip()


def _punctuation(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def infer_choices(references: Sequence[str], pattern: str | None = None) -> tuple[str, ...] | None:
    """The fixed set the answers come from, or None when they look like free text: 2 to
    MAX_INFERRED_CHOICES distinct normalized answers, each seen on average at least twice. A choice
    is spelt as its answers spell it most often; choices are sorted.

    Example:
        >>> infer_choices(["a cat", "a dog", "a bird"]) is None  # every answer different: free text
        True
    """
    spellings = Counter(a for a in (extract_answer(r, pattern) for r in references) if a)
    best: dict[str, str] = {}
    for spelling, _ in spellings.most_common():
        best.setdefault(spelling.casefold(), spelling)
    if not 2 <= len(best) <= MAX_INFERRED_CHOICES or len(references) < 2 * len(best):
        return None
    return tuple(sorted(best.values(), key=str.casefold))


def choice_texts(reference: str, choices: Sequence[str], pattern: str | None = None) -> list[str]:
    """Each choice as a whole answer in `reference`'s words: with a pattern, the reference with the
    matched answer replaced by the choice; without, the choice itself.

    Example:
        >>> choice_texts("The answer is yes.", ["yes", "no"], r"answer is (\\w+)")
        ['The answer is yes.', 'The answer is no.']
    """
    found = re.search(pattern, reference) if pattern is not None else None
    if found is None:
        return list(choices)
    group = 1 if found.re.groups else 0
    start, end = found.span(group)
    return [reference[:start] + choice + reference[end:] for choice in choices]


@dataclass(frozen=True)
class AnswerRow:
    """One validation (or test) row the answer metrics score, as one tokenizer reads it: the same rows in every trial."""

    index: int  # the row's position in its split
    prompt_ids: tuple[int, ...]  # the prompt exactly as training feeds it, up to where the answer starts
    reference: str  # the reference answer, whole
    answer: str  # its normalized answer (what a response must match)
    reference_ids: tuple[int, ...] = ()  # the reference answer as training encodes it (end of turn included)
    choice_ids: tuple[tuple[int, ...], ...] = ()  # each choice's answer as training encodes it (end of turn included)
    correct: int | None = None  # the reference's position among the choices; None when it is none of them


@dataclass(frozen=True)
class AnswerScores:
    """Metrics over the rows, and each row's own score (for paired comparisons between trials)."""

    metrics: dict[str, float]
    per_example: dict[str, list[float]]  # metric -> one value per row, in `rows` order
    rows: list[int]  # the rows' indices in their split


def exact_match_scores(rows: Sequence[AnswerRow], responses: Sequence[str], pattern: str | None) -> list[float]:
    """1.0 where a response's normalized answer is its row's, else 0.0 (a response the pattern misses is wrong).

    Example:
        >>> rows = [AnswerRow(0, (1,), "Yes", "yes"), AnswerRow(1, (1,), "No", "no")]
        >>> exact_match_scores(rows, ["yes!", "maybe"], None)
        [1.0, 0.0]
    """
    return [float(normalize_answer(response, pattern) == row.answer) for row, response in zip(rows, responses)]


def choice_scores(loglik: Sequence[Sequence[float]], correct: Sequence[int | None]) -> dict[str, list[float]]:
    """Per row: choice_accuracy (1.0 when the most likely choice is the reference; ties go to the
    first) and choice_nll (-log softmax of the choices' log-likelihoods at the reference); NaN for a
    row whose reference is none of the choices.

    Example:
        >>> scores = choice_scores([[-1.0, -2.0], [-3.0, -0.5]], [0, 0])
        >>> scores["choice_accuracy"], [round(v, 3) for v in scores["choice_nll"]]
        ([1.0, 0.0], [0.313, 2.579])
    """
    accuracy, nll = [], []
    for values, right in zip(loglik, correct):
        if right is None:
            accuracy.append(math.nan)
            nll.append(math.nan)
            continue
        best = max(range(len(values)), key=lambda i: values[i])
        top = max(values)
        log_total = top + math.log(sum(math.exp(v - top) for v in values))
        accuracy.append(float(best == right))
        nll.append(log_total - values[right])
    return {"choice_accuracy": accuracy, "choice_nll": nll}


def mean_scores(per_example: dict[str, list[float]]) -> dict[str, float]:
    """Each metric's mean over the rows it scores (NaN rows left out; NaN when none is left).

    Example:
        >>> mean_scores({"exact_match": [1.0, 0.0, 1.0, float("nan")]})
        {'exact_match': 0.6666666666666666}
    """
    means = {}
    for name, values in per_example.items():
        scored = [v for v in values if not math.isnan(v)]
        means[name] = sum(scored) / len(scored) if scored else math.nan
    return means


def sequence_logliks(model, sequences: Sequence[tuple[list[int], list[int]]], *, batch_size: int,
                     pad_token_id: int, same_length: bool = False) -> list[float]:
    """log p(continuation | context) of each (context ids, continuation ids) pair under `model`, summed
    over the continuation's tokens, in batches of `batch_size` padded on the right (with `same_length`,
    only pairs of one total length share a batch: prompt-learning methods take no padding).

    The model's train/eval modes are left as found.
    """
    import torch

    device = next(model.parameters()).device
    lengths = [len(c) + len(t) for c, t in sequences]
    order = sorted(range(len(sequences)), key=lambda i: lengths[i])  # similar lengths together: less padding
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (not same_length or lengths[batches[-1][0]] == lengths[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    out = [0.0] * len(sequences)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                width = max(lengths[i] for i in batch)
                ids = [sequences[i][0] + sequences[i][1] for i in batch]
                input_ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in ids], device=device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids], device=device)
                logprobs = model(input_ids=input_ids, attention_mask=mask).logits.float().log_softmax(-1)
                for row, i in enumerate(batch):
                    context, continuation = sequences[i]
                    # The logits at position p predict token p + 1.
                    positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1, device=device)
                    targets = torch.tensor(continuation, device=device)
                    out[i] = float(logprobs[row, positions, targets].sum())
    finally:
        for module, training in modes.items():
            module.train(training)
    return out
