"""Supervised fine-tuning of a causal LM on prompt/response pairs.

The loss covers the response tokens only (prompt tokens get label -100): the model is scored on
answering, not on re-typing the question.

Metrics: eval_loss and perplexity = exp(eval_loss), at every evaluation. Generation metrics (bleu,
rouge1, rouge2, rougeL, meteor; objectives/_metrics.py) score what the model actually answers: the
first `objective.args.generation_samples` validation prompts are greedy-decoded (up to
`max_new_tokens`) and compared with their responses. Decoding costs far more than the loss, so
they are computed only when the sweep asks for them (`metrics=` of the objective), and they need
`pip install 'ftsweep[generation]'` (METEOR also NLTK's WordNet data), checked when the sweep loads.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

from spaces import ConfigError

from ._base import Direction, Objective
from ._metrics import (
    GENERATION_METRICS,
    INSTALL,
    generation_metric_problem,
    generation_metrics,
)

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


class CausalLMObjective(Objective):
    """Prompt -> response SFT with LoRA.

    Example:
        >>> from objectives import get_objective
        >>> get_objective("causal_lm").metrics["perplexity"]
        'minimize'
        >>> get_objective("causal_lm").metrics["rougeL"]
        'maximize'
    """

    name = "causal_lm"
    metrics: ClassVar[dict[str, Direction]] = {
        "eval_loss": "minimize",
        "perplexity": "minimize",
        **{metric: "maximize" for metric in GENERATION_METRICS},
    }
    peft_task_type = "CAUSAL_LM"
    tokenized_state = ("generation_sample",)
    # (formatted prompt, reference response) of the validation rows decoded for generation metrics.
    generation_sample: tuple[tuple[str, str], ...] = ()

    @classmethod
    def check_metric_available(cls, metric: str, *, source: str | None = None, key: str = "metric.name",
                               data=None) -> None:
        """Refuse a generation metric whose package (or, for METEOR, NLTK's WordNet data) is missing here.

        Example:
            >>> CausalLMObjective.check_metric_available("eval_loss")  # always computable
        """
        problem = generation_metric_problem(metric)
        if problem is None:
            return
        why, fix = problem
        raise ConfigError(
            why, source=source, key=key, value=metric,
            hint=f"Fix: {fix}." if fix == INSTALL else f"Fix: {fix}; or choose another metric.",
        )

    def required_columns(self) -> list[str]:
        """The columns the prompt template names ({prompt} is `dataset.prompt_column`), then the response."""
        return PromptFormat(None, self.options, self.data_config, self.source).columns()

    def prompt_format(self) -> "PromptFormat":
        """How this objective turns a data row into prompt and response tokens (see PromptFormat)."""
        return PromptFormat(self.tokenizer, self.options, self.data_config, self.source)

    def format_prompt(self, row) -> str:
        return self.prompt_format().format_prompt(row)

    def encode_example(self, row) -> tuple[list[int], list[int]]:
        return self.prompt_format().encode_example(row)

    def _tokenize(self, train, validation, test):
        columns = self.required_columns()
        max_len = self.budget.max_seq_length
        # Only the format travels into `datasets.map` (which fingerprints the function and what it
        # holds to cache the result on disk): never the objective and its loaded models.
        fmt = self.prompt_format()

        def encode(batch, indices):
            out = {"input_ids": [], "attention_mask": [], "labels": []}
            for i, row in enumerate(indices):
                values = {col: batch[col][i] for col in columns}
                for col, value in values.items():
                    if not isinstance(value, str):
                        raise ConfigError(
                            f"row {row}: column '{col}' must hold text, found {type(value).__name__}",
                            source=self.source, key="dataset.source", value=self.data_config.source,
                        )
                prompt_ids, response_ids = fmt.encode_example(values)
                ids = (prompt_ids + response_ids)[:max_len]
                labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_len]
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
        self.generation_sample = self._generation_sample(validation)
        test_ids = encode_split(test) if test is not None else None
        for split_name, split in (("training", train_ids), ("validation", eval_ids)):
            if len(split) == 0:
                raise ConfigError(
                    f"no {split_name} example keeps a response token within max_seq_length",
                    source=self.source, key="budget.max_seq_length", value=max_len,
                    hint="Fix: raise budget.max_seq_length or shorten the prompts.",
                )
        return train_ids, eval_ids, test_ids

    def _load_model(self, path: str, **kwargs):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, **kwargs)

    def _collator(self):
        from transformers import DataCollatorForSeq2Seq

        # Pads input_ids with the pad token and labels with -100, which is exactly what a decoder needs.
        return DataCollatorForSeq2Seq(self.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    # ---------------------------------------------------------------- generation metrics

    def _generation_sample(self, validation) -> tuple[tuple[str, str], ...]:
        """The first `generation_samples` validation rows whose prompt leaves room for a response
        within max_seq_length (the rows eval_loss is computed on), as (formatted prompt, response)."""
        response_col = self.data_config.response_column
        fmt = self.prompt_format()
        prefix = len(fmt.prefix_ids())
        sample = []
        for row in validation:
            if len(sample) == self.options.generation_samples:
                break
            text = fmt.format_prompt(row)
            if prefix + len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) < self.budget.max_seq_length:
                sample.append((text, row[response_col].strip()))
        return tuple(sample)

    def evaluation_extras(self, model) -> dict[str, float]:
        """The requested generation metrics of `model`'s greedy answers to the validation sample;
        {} when none is requested (nothing is decoded)."""
        if not self.requested_metrics & set(GENERATION_METRICS) or not self.generation_sample:
            return {}
        prompts, references = zip(*self.generation_sample)
        return generation_metrics(self.generate_responses(model, prompts), references, self.requested_metrics)

    def generate_responses(self, model, prompts: Sequence[str]) -> list[str]:
        """Greedy answers of `model` (base or PEFT-wrapped, prompt-learning methods included) to
        already formatted prompts, tokenized as in training: bos + prompt, no response.

        Prompts are batched with padding on the left, so every answer starts right after its own
        prompt; only the new tokens are decoded. The model's train/eval modes are left as found.

        Example:
            >>> objective.generate_responses(peft_model, ["Question: How do refunds work?\\nAnswer:"])  # doctest: +SKIP
            ['Refunds reach your card within five days.']
        """
        import torch

        tok = self.tokenizer
        prefix = self.prompt_format().prefix_ids()
        pad = tok.pad_token_id
        encoded = [prefix + tok(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        device = next(model.parameters()).device
        answers: list[str] = [""] * len(encoded)
        modes = {module: module.training for module in model.modules()}
        model.eval()  # no dropout while decoding
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # Said once per generate() call with prompt tuning; _batches below takes care of it.
                warnings.filterwarnings("ignore", message="Position ids are not supported")
                for batch in _batches(encoded, self.budget.eval_batch_size, same_length=_needs_unpadded_batches(model)):
                    width = max(len(encoded[i]) for i in batch)
                    input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch],
                                             device=device)
                    attention_mask = torch.tensor(
                        [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
                    output = model.generate(
                        input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                        max_new_tokens=self.options.max_new_tokens, pad_token_id=pad,
                    )
                    # generate() returns prompt + answer; the prompt is `width` tokens in every row.
                    for i, text in zip(batch, tok.batch_decode(output[:, width:], skip_special_tokens=True)):
                        answers[i] = text.strip()
        finally:
            for module, training in modes.items():
                module.train(training)
        return answers


def _needs_unpadded_batches(model) -> bool:
    """Prompt-learning methods decode only prompts of one length together (no padding).

    PEFT drops position ids for prompt tuning and P-tuning: the model then numbers positions from
    the first column, so a left-padded prompt would be read shifted. Prefix tuning keeps them, but
    with transformers 5.24 and PEFT 0.21.2 a left-padded prompt no longer lines up with the prefix's
    cache either: its greedy answer differed from the same prompt decoded alone (measured in
    tests/objectives/test_metrics.py). Unpadded batches give the one-at-a-time answer on every version.
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
        >>> PromptFormat(None, ObjectiveOptions(prompt_template="Q: {question}\nA:"),
        ...              DataConfig(source="qa.jsonl", response_column="answer")).columns()
        ['question', 'answer']
    """

    def __init__(self, tokenizer, options, data_config, source: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.data_config = data_config
        self.source = source

    def template(self) -> str:
        if self.options.chat_template and "prompt_template" not in self.options.model_fields_set:
            return "{prompt}"
        return self.options.prompt_template

    def fields(self) -> list[str]:
        import string

        return list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(self.template()) if f))

    def column(self, field: str) -> str:
        return self.data_config.prompt_column if field == "prompt" else field

    def columns(self) -> list[str]:
        return list(dict.fromkeys([*(self.column(f) for f in self.fields()), self.data_config.response_column]))

    def user_text(self, row) -> str:
        return self.template().format(**{f: row[self.column(f)] for f in self.fields()})

    def format_prompt(self, row) -> str:
        """The text before the response (the chat template's generation prompt with a chat template)."""
        text = self.user_text(row)
        return self._chat(self._messages(text), add_generation_prompt=True) if self.options.chat_template else text

    def prefix_ids(self) -> list[int]:
        """Ids before a formatted prompt: bos for a plain template; none with a chat template (it writes its own)."""
        tok = self.tokenizer
        return [tok.bos_token_id] if tok.bos_token_id is not None and not self.options.chat_template else []

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
