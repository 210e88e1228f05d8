"""The fine-tuning tasks a sweep can run, registered by name (`objective:` in a sweep file).

The registry below is the one place tasks are listed: adding one is a module with a `Task`
subclass plus a line. Entries are imported on first use, so listing them stays cheap.

Example:
    >>> sorted(TASKS.names())
    ['causal_lm', 'sequence_classification']
    >>> TASKS.get("causal_lm").peft_task_type
    'CAUSAL_LM'
"""

from __future__ import annotations

from spaces import Registry

from .base import DataProfile, Scored, Task, Tokenized

TASKS: Registry[type[Task]] = Registry(
    "objective", key="objective.name",
    hint='Fix: use a registered name, or your own class as "package.module:ClassName".')
TASKS.register("causal_lm", "objectives.tasks.causal_lm:CausalLMTask")
TASKS.register("sequence_classification", "objectives.tasks.sequence_classification:SequenceClassificationTask")

__all__ = ["TASKS", "DataProfile", "Scored", "Task", "Tokenized"]
