"""The sweep engine's side of an objective: what lives per worker, what happens per trial.

`worker.py` keeps base models, tokenizers and tokenized data between trials; `trial.py` runs one
trial (adapter on, train, report, adapter off) with the Trainer callback of `callback.py` and the
arguments of `arguments.py`; `checkpoint.py` saves and resumes trial adapters; `architecture.py`
checks a space against a model's config before anything loads; `packed.py` trains K LoRA trials at once
on one base model; `distributed.py` runs one trial as a torch.distributed job of several processes. `objective.py` composes them with a
task (objectives/tasks) into the `Objective` the sweep engine runs.
"""

from .objective import Objective, available_objectives, get_objective
from .trial import Reporter, TrialDiverged
from .worker import BASE_MODEL_PARAM, Worker

__all__ = ["BASE_MODEL_PARAM", "Objective", "Reporter", "TrialDiverged", "Worker", "available_objectives",
           "get_objective"]
