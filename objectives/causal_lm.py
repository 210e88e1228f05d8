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
    def check_metric_available(cls, metric: str, *, source: str | None = None, key: str = "metric.name") -> None:
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
        return [self.data_config.prompt_column, self.data_config.response_column]

    def _tokenize(self, train, validation, test):
        tok = self.tokenizer
        template = self.options.prompt_template
        prompt_col, response_col = self.required_columns()
        max_len = self.budget.max_seq_length
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        # BPE tokenizers attach a space to the following word (" Refunds"), so the space between
        # prompt and response belongs to the response; a trailing space in the prompt would become
        # a lone token that never occurs in ordinary text.
        joiner = "" if template[-1:].isspace() else " "

        def encode(batch, indices):
            out = {"input_ids": [], "attention_mask": [], "labels": []}
            for row, prompt, response in zip(indices, batch[prompt_col], batch[response_col]):
                for col, value in ((prompt_col, prompt), (response_col, response)):
                    if not isinstance(value, str):
                        raise ConfigError(
                            f"row {row}: column '{col}' must hold text, found {type(value).__name__}",
                            source=self.source, key="dataset.source", value=self.data_config.source,
                        )
                # Prompt and response are tokenized apart so the boundary between them is exact.
                prompt_ids = bos + tok(template.format(prompt=prompt), add_special_tokens=False)["input_ids"]
                response_ids = tok(joiner + response, add_special_tokens=False)["input_ids"] + eos
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
        self.generation_sample = self._generation_sample(validation, template, bos)
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

    def _generation_sample(self, validation, template: str, bos: list[int]) -> tuple[tuple[str, str], ...]:
        """The first `generation_samples` validation rows whose prompt leaves room for a response
        within max_seq_length (the rows eval_loss is computed on), as (formatted prompt, response)."""
        prompt_col, response_col = self.required_columns()
        sample = []
        for prompt, response in zip(validation[prompt_col], validation[response_col]):
            if len(sample) == self.options.generation_samples:
                break
            text = template.format(prompt=prompt)
            if len(bos) + len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) < self.budget.max_seq_length:
                sample.append((text, response.strip()))
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
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        pad = tok.pad_token_id
        encoded = [bos + tok(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        device = next(model.parameters()).device
        answers: list[str] = [""] * len(encoded)
        modes = {module: module.training for module in model.modules()}
        model.eval()  # no dropout while decoding
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # Said once per generate() call with prompt tuning; _batches below takes care of it.
                warnings.filterwarnings("ignore", message="Position ids are not supported")
                for batch in _batches(encoded, self.budget.eval_batch_size, same_length=_ignores_positions(model)):
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


def _ignores_positions(model) -> bool:
    """PEFT drops position ids for prompt tuning and P-tuning (not prefix tuning): the model then
    numbers positions from the first column, so a left-padded prompt would be read shifted."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning
                and config.peft_type not in ("PREFIX_TUNING", "CARTRIDGE"))


def _batches(encoded: Sequence[list[int]], size: int, *, same_length: bool) -> list[list[int]]:
    """Row indices in batches of at most `size`; with `same_length`, only prompts of one length
    share a batch, so none needs padding."""
    if not same_length:
        return [list(range(start, min(start + size, len(encoded)))) for start in range(0, len(encoded), size)]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    return [rows[start:start + size] for rows in by_length.values() for start in range(0, len(rows), size)]
