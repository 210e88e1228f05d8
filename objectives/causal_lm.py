"""Supervised fine-tuning of a causal LM on prompt/response pairs.

The loss covers the response tokens only (prompt tokens get label -100): the model is scored on
answering, not on re-typing the question. Metrics: eval_loss and perplexity = exp(eval_loss).
"""

from __future__ import annotations

from spaces import ConfigError

from ._base import Objective

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


class CausalLMObjective(Objective):
    """Prompt -> response SFT with LoRA.

    Example:
        >>> from objectives import get_objective
        >>> get_objective("causal_lm").metrics["perplexity"]
        'minimize'
    """

    name = "causal_lm"
    metrics = {"eval_loss": "minimize", "perplexity": "minimize"}
    peft_task_type = "CAUSAL_LM"

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
