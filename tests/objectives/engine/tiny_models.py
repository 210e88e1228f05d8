"""The two bundled base models and the small data and budget the engine tests share."""

from __future__ import annotations

from objectives import (
    DataConfig,
    ModelConfig,
    ObjectiveOptions,
    TrainBudget,
    get_objective,
)

LLAMA, GPT2 = "bundled:tiny-support-lm", "bundled:tiny-support-gpt2"
DATA = DataConfig(source="bundled:support-qa", max_train_examples=64, max_eval_examples=16)
BUDGET = TrainBudget(max_steps=2, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
LORA = {"learning_rate": 3e-3, "peft_method": "lora", "lora_r": 4, "lora_alpha": 8}


def tiny_objective(task: str = "causal_lm", options: ObjectiveOptions | None = None, data: DataConfig = DATA):
    return get_objective(task)(ModelConfig(name_or_path=LLAMA), data, BUDGET, seed=0, options=options)
