"""What the distributed-sweep tests of both backends train: two learning rates of one small LoRA config, no
dropout (so a 2-process trial can equal the one-process trial exactly), a 6-step budget whose batch of 8
splits over 2 processes."""

SPACE = {"params": {
    "learning_rate": {"type": "categorical", "choices": [3e-3, 1e-2]},
    "lora_r": {"type": "fixed", "value": 4},
    "lora_dropout": {"type": "fixed", "value": 0.0},
    "target_modules": {"type": "fixed", "value": "attention"},
}}
BUDGET = {"max_steps": 6, "eval_every": 2, "batch_size": 8, "eval_batch_size": 16, "max_seq_length": 64}
DISTRIBUTED = {"devices_per_trial": 2}
