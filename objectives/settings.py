"""Typed settings an objective needs: which model, which data, how much training per trial, how to augment.

These are the `model:`, `dataset:`, `budget:`, `objective.args` and `augmentation:` sections of a
sweep file. They live here, not in `search`, because an objective must be usable on its own (a
notebook, `ftsweep train`, a Ray worker) without the sweep engine. This module is the bottom layer
of `objectives`: pure pydantic, no torch, nothing of the runtime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A metric's natural direction: what the sweep does with it unless told otherwise.
Direction = Literal["minimize", "maximize"]
# How causal_lm rows are laid out (objectives/data/conversations.py); "auto": detected from the columns.
DataFormat = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "prompt_response"]


def customized(settings: BaseModel, name: str) -> bool:
    """Whether a setting holds other than its default. Not `model_fields_set`: a sweep recorded on its study
    (and a winner.yaml written from it) sets every field, so a field's being set says nothing there.

    Example:
        >>> customized(DataConfig(source="d", prompt_column="question"), "prompt_column")
        True
        >>> customized(DataConfig.model_validate(DataConfig(source="d").model_dump()), "prompt_column")
        False
    """
    return getattr(settings, name) != type(settings).model_fields[name].default


class _Strict(BaseModel):
    # Unknown keys are errors: a typo such as `max_step` must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantizationSettings(_Strict):
    """A quantized, frozen base model under the adapter (QLoRA): bitsandbytes' `BitsAndBytesConfig`.

    Example:
        >>> QuantizationSettings().quant_type, QuantizationSettings(bits=8).bits
        ('nf4', 8)
    """

    bits: Literal[4, 8] = Field(default=4, description="4: QLoRA's 4-bit base; 8: LLM.int8().")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type (QLoRA's NormalFloat4).")
    double_quant: bool = Field(default=True, description="4-bit: quantize the quantization constants too.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="dtype matmuls run in (4-bit); auto: the model's dtype.")


class ModelConfig(_Strict):
    """The base model every trial fine-tunes.

    Example:
        >>> ModelConfig(name_or_path="bundled:tiny-support-lm").name_or_path
        'bundled:tiny-support-lm'
    """

    name_or_path: str = Field(
        description="A local directory, a hub id (e.g. 'Qwen/Qwen2.5-0.5B') or 'bundled:NAME' for a model shipped with ftsweep."
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = Field(
        default=False, description="Run the model repository's own Python code. Only when you trust it."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on a GPU that supports it, float32 otherwise."
    )
    quantization: QuantizationSettings | None = Field(
        default=None, description="Load the base quantized with bitsandbytes (QLoRA: {bits: 4}); the adapter "
        "trains in compute_dtype on top. Needs `pip install 'ftsweep[qlora]'`.",
    )
    new_head: bool = Field(
        default=False, description="sequence_classification: a checkpoint that is already a classifier of "
        "another number of labels than the data's classes gets a new head of the right size, its weights "
        "random (transformers' ignore_mismatched_sizes); the rest of the checkpoint is kept. Without it such "
        "a checkpoint is refused at launch. A head that fits, or none (a base encoder), needs nothing.",
    )


class DataConfig(_Strict):
    """Where the training examples come from and how the held-out split is made.

    Example:
        >>> DataConfig(source="data/train.jsonl", validation_fraction=0.2).validation_fraction
        0.2
    """

    source: str = Field(
        description="A local .jsonl/.json/.csv/.parquet file, a folder of split files (train.jsonl, "
                    "validation.jsonl, test.jsonl...), a folder written by `datasets`' save_to_disk (a DatasetDict's "
                    "splits used as given; a single Dataset is the train split), a `datasets` hub name, or "
                    "'bundled:NAME'."
    )
    config_name: str | None = Field(default=None, description="Hub dataset configuration name.")
    data_files: dict[str, str | list[str]] | None = Field(
        default=None, description="Split name -> file path(s) or glob(s), e.g. {train: 'train-*.jsonl', validation: "
        "dev.jsonl}; relative to `source` when it is a folder, else to where ftsweep runs. One format for all.")
    format: DataFormat = Field(
        default="auto", description="causal_lm: messages ({role, content} turns), sharegpt ({from, value} turns "
        "in `conversations`), alpaca (instruction, input, output), prompt_completion (TRL's prompt and completion) "
        "or prompt_response (prompt_template + response_column); auto: from the columns.",
    )
    train_split: str = "train"
    validation_split: str | None = Field(
        default=None, description="A split of the source to evaluate on; when absent, the source's own "
        "'validation' split, else one carved out of train."
    )
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    test_split: str | None = Field(
        default=None, description="A split of the source for the final test; when absent, the source's own 'test' "
        "split, else one carved out of train."
    )
    test_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0,
        description="Share of train held out as a test set that no trial ever sees (0: none); used by `ftsweep train`.",
    )
    max_train_examples: int | None = Field(default=None, gt=0)
    max_eval_examples: int | None = Field(default=256, gt=0, description="Caps evaluation cost per report.")
    prompt_column: str = "prompt"
    response_column: str = "response"
    text_column: str = "text"
    label_column: str = "label"
    group_column: str | None = Field(
        default=None, description="Classification: a column naming each example's group (a channel, region or "
        "demographic attribute); adds fairness metrics (gaps between groups) and the group_balance param.",
    )
    positive_label: str | None = Field(
        default=None, description="Two-class fairness metrics: the positive class (default: the larger label).",
    )
    label_map: dict[str, str] | None = Field(
        default=None, description="Classification: raw label value (as text) -> class name, e.g. {'0': negative, "
        "'1': positive}; several values may map to one class. Every value in the data must be mapped.",
    )

    checks: dict[str, Literal["warn", "error"]] = Field(
        default_factory=dict, description="Data-check findings you accept: check name -> 'warn' (its errors are "
        "shown, recorded in the study and the launch goes on) or 'error' (the default: they stop it), e.g. "
        "{leakage: warn}; `--accept leakage` on the command line does the same. Names: `ftsweep validate-data`.",
    )

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value):
        # YAML reads `0: negative` with an int key; labels are compared as text.
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value


class SweepBudget(_Strict):
    """When a whole sweep stops starting work, besides n_trials and timeout (search/store/sweep_budget.py): the
    first rule reached ends it; trials already running finish. `budget.sweep` in a sweep file.

    Example:
        >>> SweepBudget(trial_steps=5000).trial_steps
        5000
    """

    hours: float | None = Field(default=None, gt=0, description="Wall-clock hours after the launch: no trial starts "
                                "or resumes later (with timeout, the earlier of the two).")
    gpu_hours: float | None = Field(default=None, gt=0, description="Device-hours of all trials together: each "
                                    "trial's training time x its devices (resources.devices_per_trial; a CPU "
                                    "worker counts as one device).")
    trial_steps: int | None = Field(default=None, gt=0, description="Optimizer steps of all trials together (a "
                                    "resumed trial counts only the steps it trains after its checkpoint).")


class TrainBudget(_Strict):
    """How much work one trial does. Small on purpose: a trial is a probe, not the final fit.

    Example:
        >>> TrainBudget(max_steps=40, eval_every=10).eval_every
        10
    """

    max_steps: int = Field(default=60, gt=0, description="Optimizer steps per trial.")
    eval_every: int = Field(default=10, gt=0, description="Evaluate (and let the pruner decide) every N steps.")
    batch_size: int = Field(default=8, gt=0, description="Per-device training batch size.")
    eval_batch_size: int = Field(default=32, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_seq_length: int = Field(default=128, gt=8, description="Longer examples are truncated.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass instead of keeping them: less "
        "memory, about a third more compute per step; the same results.",
    )
    padding_free: bool = Field(
        default=False, description="causal_lm: flatten each batch into one sequence with per-example position "
        "ids (TRL's padding-free collator): no pad tokens computed, no attention across examples. Without a "
        "varlen attention kernel (flash attention on a GPU) attention then costs (rows x length)^2.",
    )
    packing: bool = Field(
        default=False, description="causal_lm: pack training examples into rows of max_seq_length (TRL's "
        "best-fit decreasing), each example attending only to itself; batch_size then counts packed rows. "
        "With padding_free too, the packed rows are flattened into one (TRL's SFT default; pays with a varlen "
        "attention kernel such as flash attention). Evaluation is not packed.",
    )
    early_stopping_patience: int | None = Field(
        default=None, gt=0, description="Stop a trial after this many evaluations without improving the sweep's "
        "metric (transformers' EarlyStoppingCallback). Not pruning: the trial completes with what it reached.",
    )
    early_stopping_threshold: float = Field(
        default=0.0, ge=0.0, description="How much the metric must improve to reset the patience count.",
    )
    sweep: SweepBudget | None = Field(
        default=None, description="What the whole sweep may spend: hours, gpu_hours, trial_steps (SweepBudget).",
    )

    @model_validator(mode="after")
    def _eval_not_beyond_training(self) -> "TrainBudget":
        if self.eval_every > self.max_steps and "eval_every" not in self.model_fields_set:
            object.__setattr__(self, "eval_every", self.max_steps)  # the default on a short budget: evaluate at the end
        if self.eval_every > self.max_steps:
            raise ValueError(
                f"eval_every ({self.eval_every}) is larger than max_steps ({self.max_steps}): "
                "the trial would never report, so nothing could be pruned"
            )
        return self


class ObjectiveOptions(_Strict):
    """Objective-specific knobs shared by the built-in objectives (`objective.args` in a sweep file)."""

    prompt_template: str = Field(
        default="Question: {prompt}\nAnswer:",
        description="causal_lm: the text before the response; `{prompt}` is the prompt column, any other "
        "`{name}` the column of that name. When it does not end in whitespace, the response is joined with one space.",
    )
    chat_template: bool | str | None = Field(
        default=None, description="causal_lm: render prompt and response with the tokenizer's chat template "
        "(true) or with this Jinja template; the filled prompt_template (default '{prompt}') is the user turn. "
        "Default: the tokenizer's for chat data (messages, sharegpt), none for the other formats.",
    )
    system_prompt: str | None = Field(default=None, description="causal_lm with chat_template: the system turn.")
    generation_samples: int = Field(
        default=16, gt=0, description="causal_lm: validation examples decoded (greedy) for BLEU/ROUGE/METEOR at each evaluation.",
    )
    max_new_tokens: int = Field(default=32, gt=0, description="causal_lm: longest generated response for those "
                                "metrics and exact_match (decoding stops earlier at the end of the turn).")
    answer_pattern: str | None = Field(
        default=None, description="causal_lm answer metrics: a regex that extracts the answer from a response and "
        "from its reference (its first group, else the whole match), e.g. 'The answer is (\\w+)'. A response it "
        "does not match counts as wrong; every reference must match.",
    )
    choices: list[str] | None = Field(
        default=None, description="causal_lm choice_accuracy / choice_nll: the answers every row chooses from, "
        "e.g. [positive, negative]. Default: inferred when the training and validation answers take at most "
        "10 distinct values (the launch line says so).",
    )
    eval_samples: int | None = Field(
        default=None, gt=0, description="causal_lm answer metrics (exact_match, choice_*): the validation rows "
        "they are computed on, a fixed subset drawn with the sweep seed (the same rows in every trial). "
        "Default: every validation row (at most dataset.max_eval_examples).",
    )
    task_metrics_every: int = Field(
        default=1, gt=0, description="Compute the metrics beyond the loss (answer and generation metrics) at every "
        "k-th evaluation only; the final evaluation always has them. A pruner on such a metric decides at those "
        "evaluations.",
    )
    max_cached_models: int | None = Field(
        default=None, gt=0, description="With base_model searched: models kept loaded per worker (default: as "
        "many as memory allows, least recently used dropped first).",
    )
    target_modules: dict[str, list[str]] = Field(
        default_factory=dict, description="Modules to adapt per architecture (config.model_type -> names), used "
        "when the space does not search target_modules; e.g. {gpt2: [c_attn], llama: [q_proj, v_proj]}. "
        "Unlisted architectures get PEFT's own defaults.",
    )
    num_threads: int | None = Field(
        default=None, gt=0, description="torch CPU threads per worker; default: torch's own choice."
    )

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        import re

        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"answer_pattern is not a regular expression ({exc})") from None
        if compiled.groups > 1:
            raise ValueError("answer_pattern may have one group, the answer (use (?:...) for the others)")
        return value

    @field_validator("choices")
    @classmethod
    def _distinct_choices(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if len({v.strip().casefold() for v in value}) != len(value) or len(value) < 2:
            raise ValueError("choices must be at least two answers, distinct once case and surrounding spaces are ignored")
        if any(not v.strip() for v in value):
            raise ValueError("choices must not be empty strings")
        return value

    @field_validator("prompt_template")
    @classmethod
    def _has_a_slot(cls, value: str) -> str:
        import string

        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"prompt_template is not a format string ({exc}); write literal braces as {{{{ and }}}}") from None
        if not fields:
            raise ValueError("prompt_template must name at least one column in braces, e.g. '{prompt}'")
        if any(not f.isidentifier() for f in fields):
            raise ValueError("prompt_template fields must be plain column names, e.g. {prompt} or {context}")
        return value


# ---------------------------------------------------------------- evaluation (the sweep's `evaluation:`)


class EvaluationSettings(_Strict):
    """lm-evaluation-harness tasks run on each trial's live adapter model (objectives/evaluation/harness.py): their
    metrics are `lm_eval:TASK/METRIC`, e.g. `lm_eval:my_qa/exact_match`, usable as the sweep's metric, a
    recorded metric or a constraint. Needs `pip install 'ftsweep[lmeval]'`.

    Example:
        >>> EvaluationSettings(tasks=["my_qa"], include_path="eval_tasks", limit=50).every
        0
    """

    tasks: list[str] = Field(min_length=1, description="lm-eval task names: built-in ones (their data comes "
                             "from the hub, or its cache) or those defined in include_path.")
    include_path: str | None = Field(default=None, description="A folder of your own lm-eval task YAMLs (relative "
                                     "to where ftsweep runs); local data as `dataset_path: json` with "
                                     "`dataset_kwargs: {data_files: ...}`.")
    limit: int | None = Field(default=None, gt=0, description="Rows per task (lm-eval's first N); default all.")
    every: int = Field(default=0, ge=0, description="0: at the final evaluation only; k: also at every k-th "
                       "evaluation (a pruner on an lm_eval metric decides there).")
    num_fewshot: int | None = Field(default=None, ge=0, description="Few-shot examples per prompt (default: each "
                                    "task's own).")
    batch_size: int | None = Field(default=None, gt=0, description="Default: budget.eval_batch_size.")


# ---------------------------------------------------------------- augmentation (the sweep's `augmentation:`)


class BacktranslationSettings(_Strict):
    """The two translation models of back-translation: `forward` into another language, `backward` out of it.

    Example:
        >>> settings = BacktranslationSettings(forward="Helsinki-NLP/opus-mt-en-de",
        ...                                    backward="Helsinki-NLP/opus-mt-de-en")
        >>> settings.num_beams
        1
    """

    forward: str = Field(description="Translates the training text out of its language: a local "
                         "save_pretrained directory or a hub id (any AutoModelForSeq2SeqLM).")
    backward: str = Field(description="Translates back into the training text's language.")
    forward_prefix: str = Field(default="", description="Put before every input of the forward model, e.g. "
                                "'>>fra<< ' for a multilingual opus-mt model, 'translate English to German: ' for T5.")
    backward_prefix: str = Field(default="", description="The same for the backward model.")
    max_new_tokens: int = Field(default=64, gt=0, description="Longest translation, in tokens.")
    batch_size: int = Field(default=32, gt=0, description="Texts translated per generate() call.")
    num_beams: int = Field(default=1, gt=0, description="1: greedy decoding; more: beam search (slower).")
    device: str = Field(default="auto", description="'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1', ...")
    cache_dir: str | None = Field(default=None, description="Keep translations on disk here, for later "
                                  "sweeps and other workers (a JSON-lines file per model pair).")


class AugmentationSettings(_Strict):
    """Fixed augmentation settings (the sweep file's `augmentation:`); what is searched are the `aug_*` params.

    Example:
        >>> AugmentationSettings(synonyms="bundled:support").use_wordnet
        True
    """

    synonyms: str | None = Field(default=None, description="A synonym table: YAML/JSON mapping word -> "
                                 "[synonyms] or a list of synonym groups, or CSV rows `word,synonym,...`; or "
                                 "'bundled:support' for the table of the bundled support data.")
    use_wordnet: bool = Field(default=True, description="Also take synonyms from NLTK's WordNet, for words "
                              "the table lacks, when its data is installed here (it is never downloaded).")
    backtranslation: BacktranslationSettings | None = None
    columns: list[str] | None = Field(default=None, description="Columns augmented (default: the input: the "
                                      "prompt for causal_lm, the text for sequence_classification).")
