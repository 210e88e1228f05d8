"""Trial functions: set up once per worker, then one short PEFT fine-tune per trial.

The package is grouped by concern: `objectives.data` (where models and data come from, the data
checks, chat formats, augmentation, fairness, and the one reader of user files), `objectives.adapters`
(PEFT methods, packed multi-LoRA layers, regularization), `objectives.evaluation` (metrics, per-example
scores, answer metrics, lm-evaluation-harness), `objectives.tasks` (one module per task, registered in
`TASKS`) and `objectives.engine` (what a worker keeps and what a trial does), over `objectives.settings`.

This top level is the API a user of the library needs: objectives by task name, the settings they
take, data loading and checking, and the exceptions a trial raises. The sweep engine (`search`)
imports the engine's internals from their own modules (`objectives.engine.packed`, ...).

Example:
    >>> from objectives import available_objectives, get_objective
    >>> available_objectives()
    ['causal_lm', 'sequence_classification']
    >>> get_objective("sequence_classification").check_metric("f1_macro")
    'maximize'
"""

from __future__ import annotations

from .data.checks import DataReport, Finding, validate_data
from .data.sources import bundled_datasets, bundled_models, load_splits, resolve_model_path
from .engine.objective import Objective, available_objectives, get_objective
from .engine.trial import TrialDiverged, TrialOptions, TrialPaused
from .settings import (
    AugmentationSettings,
    DataConfig,
    Direction,
    EvaluationSettings,
    ModelConfig,
    ObjectiveOptions,
    QuantizationSettings,
    SweepBudget,
    TrainBudget,
)
from .tasks import TASKS, Task

__all__ = [
    "TASKS",
    "AugmentationSettings",
    "DataConfig",
    "DataReport",
    "Direction",
    "EvaluationSettings",
    "Finding",
    "ModelConfig",
    "Objective",
    "ObjectiveOptions",
    "QuantizationSettings",
    "SweepBudget",
    "Task",
    "TrainBudget",
    "TrialDiverged",
    "TrialOptions",
    "TrialPaused",
    "available_objectives",
    "bundled_datasets",
    "bundled_models",
    "get_objective",
    "load_splits",
    "resolve_model_path",
    "validate_data",
]
