"""Supervised fine-tuning of a causal LM on prompt/response pairs.

The loss covers the response tokens only (prompt tokens get label -100): the model is scored on
answering, not on re-typing the question.

Metrics: eval_loss and perplexity = exp(eval_loss), at every evaluation. Answer metrics (exact_match,
choice_accuracy, choice_nll; objectives/evaluation/answers.py) grade the answer itself on the validation rows
(`objective.args.eval_samples` of them, the same in every trial). Generation metrics (bleu,
rouge1, rouge2, rougeL, meteor; objectives/evaluation/metrics.py) score what the model actually answers: the
first `objective.args.generation_samples` validation prompts are greedy-decoded (up to
`max_new_tokens`) and compared with their responses. Decoding costs far more than the loss, so
they are computed only when the sweep asks for them (`metrics=` of the objective), and they need
`pip install 'ftsweep[generation]'` (METEOR also NLTK's WordNet data), checked when the sweep loads.
Answer and generation metrics are computed at every `objective.args.task_metrics_every`-th evaluation
and at the final one.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from spaces import ConfigError

from ..evaluation.answers import (
    ANSWER_METRICS,
    CHOICE_METRICS,
    MAX_INFERRED_CHOICES,
    AnswerRow,
    AnswerScores,
    choice_scores,
    mean_scores,
    choice_texts,
    exact_match_scores,
    extract_answer,
    infer_choices,
    normalize_answer,
    sequence_logliks,
)
from ..data.conversations import CHAT_FORMATS, IGNORE_INDEX, ConversationFormat, detect_format
from ..evaluation.metrics import GENERATION_METRICS, INSTALL, generation_metric_problem, generation_metrics, uncertainty
from ..settings import Direction, customized
from ..data.sources import source_columns
from .base import DataProfile, Scored, Task, Tokenized


@dataclass(frozen=True)
class AnswerPlan:
    """What the answer metrics of a sweep score, as checked at launch (`CausalLMTask.plan_metrics`)."""

    metrics: tuple[str, ...]
    choices: tuple[str, ...] | None  # None: no choice metric requested
    inferred: bool  # the choices were inferred from the answers (not objective.args.choices)
    rows: int  # validation rows scored at each evaluation
    of: int  # validation rows holding an answer
    seed: int | None  # the seed that drew the rows (None: all of them)
    pattern: str | None

    def resolved_args(self) -> dict[str, Any]:
        """The `objective.args` this plan settled: inferred choices, so every worker, `export` and `train`
        score the same choices whatever data they read."""
        return {"choices": list(self.choices)} if self.inferred and self.choices else {}

    def line(self) -> str:
        """The launch line: which metrics, on which rows, over which choices.

        Example:
            >>> AnswerPlan(("choice_accuracy",), ("negative", "positive"), True, 64, 120, 0, None).line()
            'Task metrics: choice_accuracy on 64 of 120 validation rows (drawn with seed 0), over 2 choices inferred from the answers: negative, positive'
        """
        rows = f"{self.rows} of {self.of} validation rows (drawn with seed {self.seed})" if self.seed is not None \
            else f"all {self.rows} validation rows"
        text = f"Task metrics: {', '.join(self.metrics)} on {rows}"
        if self.pattern:
            text += f", the answer found by {self.pattern!r}"
        if self.choices:
            how = "inferred from the answers" if self.inferred else "of objective.args.choices"
            text += f", over {len(self.choices)} choices {how}: {', '.join(self.choices)}"
        return text


@dataclass(frozen=True)
class CausalLMState:
    """What causal_lm derives from the tokenized data of one tokenizer."""

    # (formatted prompt, reference response) of the validation rows decoded for generation metrics.
    generation_sample: tuple[tuple[str, str], ...] = ()
    # The validation rows answer metrics score (objective.args.eval_samples of them, seeded), and the
    # choices of choice_accuracy / choice_nll (given, or inferred from the answers; () when neither).
    answer_rows: tuple[AnswerRow, ...] = ()
    choices: tuple[str, ...] = ()


# Rows per split the choices of choice_accuracy are inferred from (objective.args.choices not given).
INFERENCE_ROWS = 5000


class CausalLMTask(Task):
    """Prompt -> response SFT.

    Example:
        >>> from objectives import DataConfig, ObjectiveOptions
        >>> task = CausalLMTask(DataConfig(source="bundled:support-qa"),
        ...                     options=ObjectiveOptions(prompt_template="Ticket {ticket}: {prompt}\\nAnswer:"))
        >>> task.required_columns(), task.input_columns()
        (['ticket', 'prompt', 'response'], ['ticket', 'prompt'])
        >>> CausalLMTask.metrics["perplexity"], CausalLMTask.metrics["rougeL"]
        ('minimize', 'maximize')
    """

    name = "causal_lm"
    metrics: ClassVar[dict[str, Direction]] = {
        "eval_loss": "minimize",
        "perplexity": "minimize",
        **ANSWER_METRICS,
        **{metric: "maximize" for metric in GENERATION_METRICS},
    }
    peft_task_type = "CAUSAL_LM"
    prediction_field = "predicted_response"
    periodic_metrics = frozenset({*ANSWER_METRICS, *GENERATION_METRICS})
    per_example_metrics = frozenset(ANSWER_METRICS)
    prefix_in_kwargs = True

    @classmethod
    def check_metric_available(cls, metric: str, *, source: str | None = None, key: str = "metric.name",
                               data=None) -> None:
        """Refuse a generation metric whose package (or, for METEOR, NLTK's WordNet data) is missing here.

        Example:
            >>> CausalLMTask.check_metric_available("eval_loss")  # always computable
        """
        problem = generation_metric_problem(metric)
        if problem is None:
            return
        why, fix = problem
        raise ConfigError(
            why, source=source, key=key, value=metric,
            hint=f"Fix: {fix}." if fix == INSTALL else f"Fix: {fix}; or choose another metric.",
        )

    # ---------------------------------------------------------------- columns

    @cached_property
    def data_format(self) -> str:
        """`dataset.format`, or when 'auto' the one the data's columns say (objectives/data/conversations.py);
        prompt_response whenever the sweep names its prompt template or columns."""
        if self.data.format != "auto":
            return self.data.format
        named = any(customized(self.data, name) for name in ("prompt_column", "response_column"))
        if named or customized(self.options, "prompt_template"):
            return "prompt_response"
        try:
            return detect_format(source_columns(self.data, self.source))
        except ConfigError:
            return "prompt_response"  # the data does not load: loading it reports why, with the sweep's keys

    def required_columns(self) -> list[str]:
        """The columns of the data format: for prompt_response, those the prompt template names ({prompt}
        is `dataset.prompt_column`), then the response."""
        return self.prompt_format(None).columns()

    def input_columns(self) -> list[str]:
        fmt = self.prompt_format(None)
        if self.data_format in CHAT_FORMATS:
            return fmt.columns()
        answer = self.data.response_column if self.data_format == "prompt_response" else fmt.answer_column()
        return [c for c in fmt.columns() if c != answer]

    def text_columns(self) -> list[str]:
        # Turns are checked by the data checks' conversation check; prompt/completion may hold either.
        if self.data_format in (*CHAT_FORMATS, "prompt_completion"):
            return []
        # Alpaca's input is empty wherever the instruction says it all.
        return [c for c in self.required_columns() if not (self.data_format == "alpaca" and c == "input")]

    def data_profile(self) -> DataProfile:
        columns = self.required_columns()
        plain = self.data_format == "prompt_response"
        return DataProfile(columns=columns, text_columns=self.text_columns(), input_column=self.input_columns()[0],
                           response_column=self.data.response_column if plain else self.prompt_format(None).answer_column(),
                           prompt_template=self.options.prompt_template if plain else None,
                           conversation_format=None if plain else self.data_format)

    def token_lengths(self, tokenizer, rows) -> list[tuple[int, int]]:
        """(tokens, tokens before the first answer token) of each row, exactly as `tokenize` encodes it."""
        fmt = self.prompt_format(tokenizer)
        lengths = []
        for row in rows:
            ids, labels = fmt.encode(row)
            first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            lengths.append((len(ids), first))
        return lengths

    def prompt_format(self, tokenizer) -> PromptFormat | ConversationFormat:
        """How a data row becomes tokens and labels with `tokenizer`: PromptFormat for prompt_response data,
        ConversationFormat for the chat and instruction formats."""
        if self.data_format == "prompt_response":
            return PromptFormat(tokenizer, self.options, self.data, self.source)
        present = source_columns(self.data, self.source) if self.data_format == "alpaca" else ()
        return ConversationFormat(tokenizer, self.options, self.data, self.data_format, present, self.source)

    # ---------------------------------------------------------------- model and data

    def tokenize(self, tokenizer, train, validation, test) -> Tokenized:
        columns = self.required_columns()
        max_len = self.budget.max_seq_length
        source, data_source = self.source, self.data.source
        # Only plain values and the format travel into `datasets.map` (which fingerprints the function
        # and what it holds to cache the result on disk).
        fmt = self.prompt_format(tokenizer)

        text_columns = self.text_columns()

        def encode(batch, indices):
            out = {"input_ids": [], "attention_mask": [], "labels": []}
            for i, row in enumerate(indices):
                values = {col: batch[col][i] for col in columns}
                for col in text_columns:
                    if not isinstance(values[col], str):
                        raise ConfigError(
                            f"row {row}: column '{col}' must hold text, found {type(values[col]).__name__}",
                            source=source, key="dataset.source", value=data_source,
                        )
                ids, labels = fmt.encode(values)
                ids, labels = ids[:max_len], labels[:max_len]
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(labels)
            return out

        def encode_split(split):
            encoded = split.map(encode, batched=True, with_indices=True, remove_columns=split.column_names)
            # A prompt longer than max_seq_length leaves no response token to learn from: its loss
            # would be 0/0 = NaN, so such rows are dropped.
            return encoded.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"]))

        train_ids, eval_ids = encode_split(train), encode_split(validation)
        choices = self.resolve_choices(train, validation) or ()
        state = CausalLMState(tuple(self._answerable(tokenizer, validation, limit=self.options.generation_samples)),
                              answer_rows=tuple(self.answer_rows(tokenizer, validation, sample=self.options.eval_samples,
                                                                 choices=choices)),
                              choices=choices)
        test_ids = encode_split(test) if test is not None else None
        for split_name, split in (("training", train_ids), ("validation", eval_ids)):
            if len(split) == 0:
                raise ConfigError(
                    f"no {split_name} example keeps a response token within max_seq_length",
                    source=self.source, key="budget.max_seq_length", value=max_len,
                    hint="Fix: raise budget.max_seq_length or shorten the prompts.",
                )
        return Tokenized(train_ids, eval_ids, test_ids, state)

    def load_model(self, path: str, *, state: Any = None, **kwargs):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if self.budget.padding_free or self.budget.packing:
            check_padding_free(model, key="budget.packing" if self.budget.packing else "budget.padding_free",
                               source=self.source)
        return model

    def skeleton_model(self, config, state: Any = None):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(config)

    def collator(self, tokenizer):
        if self.budget.padding_free or self.budget.packing:
            from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

            # TRL's collator, position ids restarting at each example (packed rows carry their examples'
            # lengths), so attention never crosses examples: padding-free, the batch as one row; packed
            # only, one packed row per batch row (attention costs rows x length^2, as padded batches do,
            # where a flattened batch costs (rows x length)^2 without a varlen kernel such as flash attention).
            flat = self.budget.padding_free
            return PositionsOnly(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=flat,
                                                                 return_position_ids=not flat))
        from transformers import DataCollatorForSeq2Seq

        # Pads input_ids with the pad token and labels with -100, which is exactly what a decoder needs.
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    def training_data(self, params: Mapping[str, Any], rows, state: Any, *, trainer_cls: type, collator,
                      with_validation: bool = False) -> tuple[Any, type, Any]:
        """With `budget.packing`, the training rows packed into rows of max_seq_length by TRL's best-fit
        decreasing (no example is split; each keeps its own positions and labels)."""
        if not self.budget.packing:
            return rows, trainer_cls, collator
        from trl.data_utils import pack_dataset

        return pack_dataset(rows.select_columns(["input_ids", "labels"]), self.budget.max_seq_length,
                            strategy="bfd"), trainer_cls, collator

    # ---------------------------------------------------------------- generation

    def _answerable(self, tokenizer, rows, *, limit: int | None = None) -> list[tuple[str, str]]:
        """(formatted prompt, reference response) of the first `limit` rows whose prompt leaves room
        for a response within max_seq_length: the rows eval_loss is computed on."""
        return [(prompt, reference) for _, prompt, _, reference in self._fitting(tokenizer, rows, limit=limit)]

    def _fitting(self, tokenizer, rows, *, limit: int | None = None):
        """(row index, formatted prompt, its ids as training feeds them, reference) of the first `limit` rows
        (all when None) whose prompt leaves room for a response within max_seq_length."""
        fmt = self.prompt_format(tokenizer)
        prefix = fmt.prefix_ids()
        for i in range(len(rows)):
            if limit is not None and limit <= 0:
                return
            row = rows[i]
            text = fmt.format_prompt(row)
            ids = prefix + tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) < self.budget.max_seq_length:
                if limit is not None:
                    limit -= 1
                yield i, text, ids, fmt.reference(row)

    # ---------------------------------------------------------------- answer metrics (objectives/evaluation/answers.py)

    def resolve_choices(self, *splits) -> tuple[str, ...] | None:
        """`objective.args.choices`, else the choices the answers of `splits` take (None when they are
        free text: more than MAX_INFERRED_CHOICES distinct answers)."""
        if self.options.choices:
            return tuple(self.options.choices)
        fmt = self.prompt_format(None)
        # A fixed answer set shows in a few thousand rows; reading every row of a large training set would not
        # change the choices, only the set-up time.
        rows = [row for split in splits if split is not None for row in _first(split, INFERENCE_ROWS)]
        return infer_choices([fmt.reference(row) for row in rows], self.options.answer_pattern)

    def answer_rows(self, tokenizer, rows, *, sample: int | None = None,
                    choices: Sequence[str] | None = None) -> list[AnswerRow]:
        """The rows answer metrics score, encoded as training encodes them: of those whose prompt fits
        max_seq_length and whose reference holds an answer, `sample` drawn with the sweep seed (all
        when None), in split order."""
        pattern = self.options.answer_pattern
        fmt = self.prompt_format(tokenizer)
        fitting = [(i, ids, reference, answer) for i, _, ids, reference in self._fitting(tokenizer, rows)
                   if (answer := normalize_answer(reference, pattern))]
        if sample is not None and sample < len(fitting):
            fitting = sorted(random.Random(self.seed).sample(fitting, sample))
        keys = [normalize_answer(choice) for choice in choices or ()]
        encoded = []
        for i, ids, reference, answer in fitting:
            choice_ids = tuple(tuple(fmt.answer_ids(rows[i], text)) for text in choice_texts(reference, choices, pattern)) \
                if choices else ()
            encoded.append(AnswerRow(
                index=i, prompt_ids=tuple(ids),
                reference=reference, answer=answer, reference_ids=tuple(fmt.answer_ids(rows[i], reference)),
                choice_ids=choice_ids,
                correct=keys.index(answer) if answer in keys else None))
        return encoded

    def plan_metrics(self, requested, train, validation) -> AnswerPlan | None:
        """What the answer metrics in `requested` will score, checked on the raw splits before any trial:
        the answer pattern matches every validation reference; choice metrics have choices (given, or
        inferred from the training and validation answers) and every validation answer is one of them.
        None when no answer metric is requested."""
        wanted = [m for m in ANSWER_METRICS if m in set(requested)]
        if not wanted:
            return None
        fmt = self.prompt_format(None)
        pattern = self.options.answer_pattern
        references = [fmt.reference(row) for row in validation]
        answers = [normalize_answer(ref, pattern) for ref in references]
        if pattern is not None:
            missed = [i for i, answer in enumerate(answers) if answer is None]
            if missed:
                raise ConfigError(
                    f"the answer pattern matches {len(references) - len(missed)} of {len(references)} validation "
                    f"references (row {missed[0]}: {references[missed[0]][:80]!r} has no match)", source=self.source,
                    key="objective.args.answer_pattern", value=pattern,
                    hint="Fix: a pattern that finds the answer in every reference (its first group, else the whole "
                    "match), or none: the whole answer is then compared.")
        choices, inferred = None, False
        if set(wanted) & set(CHOICE_METRICS):
            choices = self.resolve_choices(train, validation)
            inferred = not self.options.choices
            if choices is None:
                distinct = sorted({a for a in (extract_answer(fmt.reference(r), pattern) for s in (train, validation)
                                                for r in _first(s, INFERENCE_ROWS)) if a}, key=str.casefold)
                raise ConfigError(
                    f"{', '.join(m for m in wanted if m in CHOICE_METRICS)} needs the answers' choices, and the "
                    f"answers take {len(distinct)} distinct values (e.g. {', '.join(map(repr, distinct[:3]))}): "
                    f"free text, not 2 to {MAX_INFERRED_CHOICES} choices", source=self.source,
                    key="objective.args.choices", hint="Fix: list the choices in objective.args.choices (with "
                    "answer_pattern if the answer is part of a longer reference), or optimize exact_match instead.")
            keys = {normalize_answer(c) for c in choices}
            outside = [i for i, answer in enumerate(answers) if answer not in keys]
            if outside:
                raise ConfigError(
                    f"{len(outside)} of {len(references)} validation answers are none of the choices (row "
                    f"{outside[0]}: {extract_answer(references[outside[0]], pattern)!r})", source=self.source,
                    key="objective.args.choices", value=list(choices),
                    hint="Fix: list every answer the data uses (case and surrounding punctuation are ignored), or "
                    "leave choices out to infer them.")
        rows = sum(1 for answer in answers if answer)
        scored = min(rows, self.options.eval_samples or rows)
        return AnswerPlan(metrics=tuple(wanted), choices=tuple(choices) if choices else None, inferred=inferred,
                          rows=scored, of=rows, seed=self.seed if scored < rows else None, pattern=pattern)

    def answer_scores(self, model, tokenizer, rows: Sequence[AnswerRow], wanted) -> AnswerScores | None:
        """The answer metrics in `wanted` of `model` on encoded `rows`, with each row's own score; None
        when none is wanted. exact_match decodes (greedy, to the end of the turn); the choice metrics take
        one batched forward pass over every row's choices (rows already encoded with their choices)."""
        wanted = [m for m in ANSWER_METRICS if m in set(wanted)]
        if not wanted or not rows:
            return None
        per_example: dict[str, list[float]] = {}
        if "exact_match" in wanted:
            stop_ids, stop_strings = self.end_of_turn(tokenizer, rows[0])
            responses = self._generate(model, tokenizer, [list(row.prompt_ids) for row in rows], stop_ids=stop_ids,
                                       stop_strings=stop_strings)
            per_example["exact_match"] = exact_match_scores(rows, responses, self.options.answer_pattern)
        if set(wanted) & set(CHOICE_METRICS) and rows[0].choice_ids:
            pairs = [(list(row.prompt_ids), list(ids)) for row in rows for ids in row.choice_ids]
            logliks = sequence_logliks(model, pairs, batch_size=self.budget.eval_batch_size,
                                       pad_token_id=tokenizer.pad_token_id, same_length=_needs_unpadded_batches(model))
            width = len(rows[0].choice_ids)
            scores = choice_scores([logliks[i * width:(i + 1) * width] for i in range(len(rows))],
                                   [row.correct for row in rows])
            per_example.update({m: scores[m] for m in CHOICE_METRICS if m in wanted})
        return AnswerScores(mean_scores(per_example), per_example, [row.index for row in rows])

    @staticmethod
    def end_of_turn(tokenizer, row: AnswerRow) -> tuple[list[int], list[str]]:
        """What ends an answer, read off how training encodes `row`'s: (eos and the special tokens after
        the answer, e.g. <|im_end|>; the text after it when the template writes its end of turn as plain
        text, e.g. a ChatML template on a tokenizer without ChatML's tokens).

        Example:
            >>> from transformers import AutoTokenizer
            >>> from objectives import ModelConfig, resolve_model_path
            >>> tok = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm")))
            >>> row = AnswerRow(0, (), "yes", "yes", tuple(tok("yes<|im_end|>\\n", add_special_tokens=False)["input_ids"]))
            >>> CausalLMTask.end_of_turn(tok, row)
            ([2], ['<|im_end|>'])
        """
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        special = set(tokenizer.all_special_ids)
        ids += [t for t in row.reference_ids if t in special]
        text = tokenizer.decode([t for t in row.reference_ids if t not in special])
        at = text.find(row.reference)
        tail = text[at + len(row.reference):].strip() if at >= 0 else ""
        return list(dict.fromkeys(ids)), [tail] if tail else []

    def evaluation_extras(self, model, tokenizer, state: CausalLMState, requested: set[str]) -> dict[str, float]:
        """The requested answer metrics of `model` on the validation rows answer metrics score, and the
        requested generation metrics of its greedy answers to the generation sample; {} when none is
        requested (nothing is decoded)."""
        return self.evaluation_details(model, tokenizer, state, requested)[0]

    def evaluation_details(self, model, tokenizer, state: CausalLMState, requested: set[str]):
        """`evaluation_extras`, with each answer metric's per-row scores."""
        extras: dict[str, float] = {}
        per_example: dict[str, dict[str, list]] = {}
        scores = self.answer_scores(model, tokenizer, state.answer_rows, requested)
        if scores is not None:
            extras.update(scores.metrics)
            per_example = {name: {"rows": scores.rows, "scores": values} for name, values in scores.per_example.items()}
        if set(requested) & set(GENERATION_METRICS) and state.generation_sample:
            prompts, references = zip(*state.generation_sample)
            extras.update(generation_metrics(self.generate_responses(model, tokenizer, prompts), references, requested))
        return extras, per_example

    def evaluate_generation(self, model, tokenizer, rows, wanted: Sequence[str]) -> dict[str, float]:
        """The answer metrics and BLEU/ROUGE/METEOR (those in `wanted`) of `model` on raw `rows` (every row
        whose prompt fits; `train`'s test split, `gate`'s held-out rows)."""
        metrics: dict[str, float] = {}
        if set(wanted) & set(ANSWER_METRICS):
            choices = self.resolve_choices(rows) if set(wanted) & set(CHOICE_METRICS) else None
            scores = self.answer_scores(model, tokenizer, self.answer_rows(tokenizer, rows, choices=choices), wanted)
            if scores is not None:
                metrics.update(scores.metrics)
        asked = [m for m in wanted if m in GENERATION_METRICS]
        pairs = self._answerable(tokenizer, rows) if asked else []
        if pairs:
            prompts, references = zip(*pairs)
            metrics.update(generation_metrics(self.generate_responses(model, tokenizer, prompts), references, asked))
        return metrics

    def generate_responses(self, model, tokenizer, prompts: Sequence[str]) -> list[str]:
        """Greedy answers of `model` (base or PEFT-wrapped, prompt-learning methods included) to
        already formatted prompts, tokenized as in training: bos + prompt, no response.

        Prompts are batched with padding on the left, so every answer starts right after its own
        prompt; only the new tokens are decoded. The model's train/eval modes are left as found.

        Example:
            >>> from transformers import AutoModelForCausalLM, AutoTokenizer
            >>> from objectives import DataConfig, ModelConfig, ObjectiveOptions, resolve_model_path
            >>> path = resolve_model_path(ModelConfig(name_or_path="bundled:tiny-support-lm"))
            >>> task = CausalLMTask(DataConfig(source="bundled:support-qa"), options=ObjectiveOptions(max_new_tokens=4))
            >>> answers = task.generate_responses(AutoModelForCausalLM.from_pretrained(path),
            ...                                   AutoTokenizer.from_pretrained(path), ["Question: Refunds?\\nAnswer:"])
            >>> len(answers), isinstance(answers[0], str)
            (1, True)
        """
        prefix = self.prompt_format(tokenizer).prefix_ids()
        encoded = [prefix + tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        return self._generate(model, tokenizer, encoded)

    def _generate(self, model, tokenizer, encoded: Sequence[list[int]], *, stop_ids: Sequence[int] | None = None,
                  stop_strings: Sequence[str] = ()) -> list[str]:
        """Greedy answers to encoded prompts, batched with left padding (the KV cache on), each stopping at
        the first of `stop_ids` (default: eos) or `stop_strings`, or after max_new_tokens."""
        import torch

        tok = tokenizer
        pad = tok.pad_token_id
        device = next(model.parameters()).device
        answers: list[str] = [""] * len(encoded)
        modes = {module: module.training for module in model.modules()}
        stop = list(stop_ids) if stop_ids else None
        model.eval()  # no dropout while decoding
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # Said once per generate() call with prompt tuning; _batches below takes care of it.
                warnings.filterwarnings("ignore", message="Position ids are not supported")
                for batch in _batches(encoded, self.budget.eval_batch_size, same_length=_needs_unpadded_batches(model)):
                    width = max(len(encoded[i]) for i in batch)
                    input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + list(encoded[i]) for i in batch],
                                             device=device)
                    attention_mask = torch.tensor(
                        [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
                    output = model.generate(
                        input_ids=input_ids, attention_mask=attention_mask, do_sample=False, use_cache=True,
                        max_new_tokens=self.options.max_new_tokens, pad_token_id=pad,
                        **({"eos_token_id": stop} if stop else {}),
                        **({"stop_strings": list(stop_strings), "tokenizer": tok} if stop_strings else {}),
                    )
                    # generate() returns prompt + answer; the prompt is `width` tokens in every row.
                    for i, ids in zip(batch, output[:, width:].tolist()):
                        if stop:
                            ids = ids[:next((k for k, t in enumerate(ids) if t in stop), len(ids))]
                        text = tok.decode(ids, skip_special_tokens=True)
                        for end in stop_strings:
                            text = text.split(end, 1)[0]
                        answers[i] = text.strip()
        finally:
            for module, training in modes.items():
                module.train(training)
        return answers

    def score_uncertainty(self, model, tokenizer, state: Any, rows: Sequence[Mapping[str, Any]], *,
                          strategy: str, batch_size: int, max_new_tokens: int | None = None) -> list[Scored]:
        """Each row's prompt, formatted as in training, greedy-decoded (up to `max_new_tokens`); its
        uncertainty is the mean over the answer's tokens (end-of-sequence included: deciding to stop is
        part of the answer) of the uncertainty of the distribution each was chosen from."""
        import torch

        tok = tokenizer
        fmt = self.prompt_format(tok)
        pad, eos = tok.pad_token_id, tok.eos_token_id
        device = next(model.parameters()).device
        max_new_tokens = max_new_tokens or self.options.max_new_tokens
        # The prompt's ids and no response: exactly what the model read before answering in training.
        encoded = [fmt.prefix_ids() + tok(fmt.format_prompt(row), add_special_tokens=False)["input_ids"] for row in rows]
        scored: list[Scored | None] = [None] * len(encoded)
        # Left padding, so every answer starts right after its own prompt (as in generate_responses).
        for batch in _batches(encoded, batch_size, same_length=_needs_unpadded_batches(model)):
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
            attention_mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                                          device=device)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, output_logits=True,
                                 return_dict_in_generate=True)
            generated = out.sequences[:, width:]
            # [batch, steps, vocab]: the raw logits each generated token was chosen from.
            per_token = uncertainty(torch.stack(out.logits, dim=1).double().softmax(-1), strategy)
            for row, i in enumerate(batch):
                tokens = generated[row].tolist()
                # Up to and including the first end-of-sequence token; later steps only pad finished rows.
                length = tokens.index(eos) + 1 if eos in tokens else len(tokens)
                value = float(per_token[row, :length].mean())
                scored[i] = Scored(value, tok.decode(tokens[:length], skip_special_tokens=True).strip())
        return scored  # type: ignore[return-value]


class PositionsOnly:
    """A collator's batches with position ids and no attention mask, and `use_cache=False`: transformers then
    separates the examples of a row by its position ids (`masking_utils.find_packed_sequence_indices`).

    It does so only when the forward has no attention mask and no cache; a model's forward makes a cache
    whenever `use_cache` is on -- its config's default, in training too -- and the examples would attend to
    each other (TRL's SFTTrainer passes use_cache=False too). Padding at a row's end has position 0 each:
    every pad is a sequence of its own, and its label is -100.
    """

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate(examples)
        batch.pop("attention_mask", None)
        return {**batch, "use_cache": False}


def check_padding_free(model, *, key: str = "budget.padding_free", source: str | None = None) -> None:
    """Refuse padding-free batches for a model whose attention would cross the examples of a flattened
    batch: two short sequences are run apart and flattened (TRL's collator), and their logits compared.

    transformers' masking (`masking_utils`) reads packed sequences from the position ids for the models
    built on it; a model that ignores them (ALiBi models, for one, take no position ids) would silently
    train on examples that see each other.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    first, second = [(7 * i + 3) % vocab for i in range(5)], [(11 * i + 5) % vocab for i in range(4)]
    batch = PositionsOnly(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))(
        [{"input_ids": first}, {"input_ids": second}])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flat = model(**batch).logits[0].float()
            apart = torch.cat([model(torch.tensor([ids], device=device)).logits[0].float() for ids in (first, second)])
    except (TypeError, ValueError, RuntimeError) as exc:
        flat, apart, error = None, None, f"{type(exc).__name__}: {exc}"
    finally:
        model.train(was_training)
    if flat is not None and torch.allclose(flat, apart, atol=1e-3, rtol=1e-3):
        return
    why = error if flat is None else "its attention crosses the examples of a flattened batch"
    raise ConfigError(
        f"{model.config.model_type} models cannot train on padding-free batches here ({why})", source=source,
        key=key, value=True,
        hint="Fix: set budget.padding_free and budget.packing to false for this model (padded batches).")


def _first(rows, n: int):
    """The first `n` rows of a datasets.Dataset or a list."""
    return rows.select(range(min(n, len(rows)))) if hasattr(rows, "select") else rows[:n]


def _needs_unpadded_batches(model) -> bool:
    """Prompt-learning methods decode only prompts of one length together (no padding).

    PEFT drops position ids for prompt tuning and P-tuning: the model then numbers positions from
    the first column, so a left-padded prompt would be read shifted. Prefix tuning keeps them, but
    with transformers 5.24 and PEFT 0.21.2 a left-padded prompt no longer lines up with the prefix's
    cache either: its greedy answer differed from the same prompt decoded alone (measured in
    tests/objectives/tasks/test_causal_lm.py). Unpadded batches give the one-at-a-time answer on every version.
    """
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def _batches(encoded: Sequence[list[int]], size: int, *, same_length: bool) -> list[list[int]]:
    """Row indices in batches of at most `size`; with `same_length`, only prompts of one length
    share a batch, so none needs padding."""
    if not same_length:
        return [list(range(start, min(start + size, len(encoded)))) for start in range(0, len(encoded), size)]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    return [rows[start:start + size] for rows in by_length.values() for start in range(0, len(rows), size)]


class PromptFormat:
    """Data row -> prompt text -> (prompt ids, response ids), as every causal_lm trial sees it.

    `objective.args.prompt_template` names columns in braces (`{prompt}` is `dataset.prompt_column`),
    e.g. "Context: {context}\nQuestion: {prompt}\nAnswer:". With `objective.args.chat_template`
    (true: the tokenizer's own; or a Jinja template string) the filled template is the user turn
    (bare `{prompt}` by default), after `system_prompt` if any, rendered by the chat template.

    Example:
        >>> from objectives import DataConfig, ObjectiveOptions
        >>> PromptFormat(None, ObjectiveOptions(prompt_template="Q: {question}\\nA:"),
        ...              DataConfig(source="qa.jsonl", response_column="answer")).columns()
        ['question', 'answer']
    """

    def __init__(self, tokenizer, options, data_config, source: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.data_config = data_config
        self.source = source

    def template(self) -> str:
        """The prompt template in use: `{prompt}` alone with a chat template, unless one is given."""
        if self.options.chat_template and not customized(self.options, "prompt_template"):
            return "{prompt}"
        return self.options.prompt_template

    def fields(self) -> list[str]:
        """The template's fields, in order, each once."""
        import string

        return list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(self.template()) if f))

    def column(self, field: str) -> str:
        """The data column a template field reads (`{prompt}` is `dataset.prompt_column`)."""
        return self.data_config.prompt_column if field == "prompt" else field

    def columns(self) -> list[str]:
        """The template's columns, then the response column."""
        return list(dict.fromkeys([*(self.column(f) for f in self.fields()), self.data_config.response_column]))

    def user_text(self, row) -> str:
        """The template filled from `row`."""
        return self.template().format(**{f: row[self.column(f)] for f in self.fields()})

    def format_prompt(self, row) -> str:
        """The text before the response (the chat template's generation prompt with a chat template)."""
        text = self.user_text(row)
        return self._chat(self._messages(text), add_generation_prompt=True) if self.options.chat_template else text

    def prefix_ids(self) -> list[int]:
        """Ids before a formatted prompt: bos for a plain template; none with a chat template (it writes its own)."""
        tok = self.tokenizer
        return [tok.bos_token_id] if tok.bos_token_id is not None and not self.options.chat_template else []

    def answer_column(self) -> str:
        return self.data_config.response_column

    def reference(self, row) -> str:
        """The response generation metrics compare the model's answer with."""
        return row[self.data_config.response_column].strip()

    def encode(self, row) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one row before truncation: labels -100 over the prompt."""
        prompt_ids, response_ids = self.encode_example(row)
        return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids

    def answer_ids(self, row, answer: str) -> list[int]:
        """The ids training puts after `row`'s prompt were `answer` its response (eos or end of turn included)."""
        return self.encode_example({**row, self.data_config.response_column: answer})[1]

    def encode_example(self, row) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) of one row, before truncation.

        Prompt and response are tokenized apart so the boundary between them is exact. With a plain
        template, BPE tokenizers attach a space to the following word (" Refunds"), so the space
        between prompt and response belongs to the response (a trailing space in the prompt would
        become a lone token never seen in ordinary text); eos ends the response. With a chat template
        the response is what the template renders after the prompt: the answer and its end-of-turn.
        """
        tok = self.tokenizer
        prompt = self.format_prompt(row)
        response = row[self.data_config.response_column]
        prompt_ids = self.prefix_ids() + tok(prompt, add_special_tokens=False)["input_ids"]
        if self.options.chat_template:
            full = self._chat(self._messages(self.user_text(row), response), add_generation_prompt=False)
            if not full.startswith(prompt):
                raise ConfigError(
                    "the chat template renders the conversation differently once the answer follows, so the "
                    "prompt's tokens cannot be masked out of the loss", source=self.source,
                    key="objective.args.chat_template", hint="Fix: use a template whose generation prompt is a "
                    "prefix of the whole conversation (most are), or a plain prompt_template.",
                )
            return prompt_ids, tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        joiner = "" if prompt[-1:].isspace() else " "
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        return prompt_ids, tok(joiner + response, add_special_tokens=False)["input_ids"] + eos

    def _messages(self, user: str, answer: str | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.options.system_prompt}] if self.options.system_prompt else []
        reply = [{"role": "assistant", "content": answer}] if answer is not None else []
        return [*system, {"role": "user", "content": user}, *reply]

    def _chat(self, messages, *, add_generation_prompt: bool) -> str:
        custom = self.options.chat_template if isinstance(self.options.chat_template, str) else None
        if custom is None and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template", source=self.source, key="objective.args.chat_template",
                value=True, hint="Fix: give the template itself (a Jinja string) in objective.args.chat_template, "
                "or set it to false to use the plain prompt_template.",
            )
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  chat_template=custom)
