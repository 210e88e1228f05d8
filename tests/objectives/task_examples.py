"""The bundled data each registered task trains on in tests: a new task adds its row here, and the
suites that iterate the task registry (tests/objectives/tasks/test_task_contract.py,
tests/objectives/engine/test_trial.py) then run it."""

from __future__ import annotations

from objectives import DataConfig, ModelConfig, TrainBudget

MODEL = ModelConfig(name_or_path="bundled:tiny-support-lm")
TASK_DATA = {
    "causal_lm": DataConfig(source="bundled:support-qa", max_train_examples=64, max_eval_examples=16),
    "sequence_classification": DataConfig(source="bundled:support-intents", max_train_examples=64, max_eval_examples=32),
}
BUDGET = TrainBudget(max_steps=4, eval_every=2, batch_size=4, eval_batch_size=16, max_seq_length=64)
