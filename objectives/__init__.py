"""Trial functions: set up once per worker, then one short PEFT fine-tune per trial.

What a task is lives in `objectives.tasks` (one module per task, registered in `TASKS`); what a
worker keeps and what a trial does, in `objectives.engine`; the settings, sources, metrics, PEFT
methods, augmentation, fairness and regularization they share, in a module each. This package's
top level is the API the sweep engine (`search`) uses.

Example:
    >>> from objectives import available_objectives, get_objective
    >>> available_objectives()
    ['causal_lm', 'sequence_classification']
    >>> get_objective("sequence_classification").check_metric("f1_macro")
    'maximize'
"""

from __future__ import annotations

from .data_checks import CHECKS, DataReport, Finding, validate_data
from .engine.callback import COST_METRICS
from .engine.checkpoint import checkpoint_problem, checkpoint_state, latest_checkpoint
from .engine.objective import Objective, available_objectives, check_augmentation, get_objective
from .engine.distributed import RankLost, group_failed, run_distributed_trial
from .engine.packed import PACK_METRICS, PER_SLOT_PARAMS, run_packed
from .engine.trial import PAUSE, Reporter, TrialDiverged, TrialOptions, TrialPaused
from .harness import Harness, is_harness_metric
from .engine.worker import BASE_MODEL_PARAM
from .metrics import GENERATION_METRICS, UNCERTAINTY_STRATEGIES, generation_metrics, perplexity, uncertainty
from .peft_methods import PEFT_METHODS, check_method_params
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
from .sources import ASSETS, bundled_datasets, bundled_models, load_splits, resolve_model_path
from .tasks import TASKS, Task

OBJECTIVES = TASKS  # the registry under its older name: objective names are task names

__all__ = [
    "ASSETS",
    "BASE_MODEL_PARAM",
    "CHECKS",
    "COST_METRICS",
    "GENERATION_METRICS",
    "OBJECTIVES",
    "PAUSE",
    "PEFT_METHODS",
    "PACK_METRICS",
    "RankLost",
    "group_failed",
    "PER_SLOT_PARAMS",
    "TASKS",
    "UNCERTAINTY_STRATEGIES",
    "AugmentationSettings",
    "DataConfig",
    "DataReport",
    "EvaluationSettings",
    "Direction",
    "Finding",
    "Harness",
    "ModelConfig",
    "Objective",
    "ObjectiveOptions",
    "QuantizationSettings",
    "Reporter",
    "SweepBudget",
    "Task",
    "checkpoint_problem",
    "checkpoint_state",
    "latest_checkpoint",
    "TrainBudget",
    "TrialDiverged",
    "TrialOptions",
    "TrialPaused",
    "available_objectives",
    "bundled_datasets",
    "bundled_models",
    "check_augmentation",
    "check_method_params",
    "generation_metrics",
    "get_objective",
    "is_harness_metric",
    "load_splits",
    "perplexity",
    "resolve_model_path",
    "run_distributed_trial",
    "run_packed",
    "uncertainty",
    "validate_data",
]
